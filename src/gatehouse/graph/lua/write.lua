-- gatehouse: one atomic graph write. Mirrors gatehouse/graph/plan.py step by
-- step; nothing is written until every check has passed. (plan.check_batch,
-- which refuses a batch naming one target twice, depends on the batch alone
-- and runs in Python before this script.)
--
-- ARGV[1]  key prefix (e.g. "gh")
-- ARGV[2]  JSON batch: {ops, pre, kinds, rels, cons, maxlen}
--   ops:  ["t"|"d", res, rel, subj] | ["p", obj, attrs_json] | ["x", obj]
--   pre:  [must_exist (1|0), res, rel, subj]
--   kinds: {type: "root"|"child"|"global"}
--   rels:  {type: [relation, ...]}  (what an object of the type may hold)
--   cons:  {k="mx", n, t, r, m} | {k="un", n, t, r} | {k="ex", n, l=[...], r=[...]}
-- ARGV[3]  epoch to set if Redis holds none (a fresh or wiped server)
-- Returns {revision, changed}: the new revision and 1, or, when the batch
-- changes nothing, the current revision and 0 (nothing committed or logged).
-- Errors are "GH <KIND> <name>\t<message>".

local P = ARGV[1]
local b = cjson.decode(ARGV[2])
local kinds = b.kinds
local GLOBAL = "_"

local function fail(kind, name, msg)
  return redis.error_reply("GH " .. kind .. " " .. name .. "\t" .. msg)
end
local function tname(key) return string.match(key, "^([^:]+):") end
local function scoped(scope, suffix) return P .. ":{" .. scope .. "}:" .. suffix end
local function fkey(scope, res, rel) return scoped(scope, "f:" .. res .. "#" .. rel) end

local homes, new_homes = {}, {}
local function home(key)
  if homes[key] ~= nil then return homes[key] end
  local kind = kinds[tname(key)] or "child"
  local found
  if kind == "root" then found = key
  elseif kind == "global" then found = GLOBAL
  else found = redis.call("HGET", P .. ":home", key) end
  if found then homes[key] = found end
  return found or nil
end
local function is_member(res, rel, subj)
  local h = home(res)
  if not h then return false end
  return redis.call("SISMEMBER", fkey(h, res, rel), subj) == 1
end

-- 1. preconditions
for _, pre in ipairs(b.pre) do
  local exists = is_member(pre[2], pre[3], pre[4])
  if exists ~= (pre[1] == 1) then
    local rel = pre[2] .. "#" .. pre[3] .. "@" .. pre[4]
    return fail("ABORTED", "precondition", "precondition failed: " .. rel ..
      (pre[1] == 1 and " does not exist" or " exists"))
  end
end

-- 2. homes of new children from the batch's parent edges (any order)
local pending = {}
for _, op in ipairs(b.ops) do
  if op[1] == "t" and op[3] == "parent" then table.insert(pending, op) end
end
local progress = true
while #pending > 0 and progress do
  progress = false
  local rest = {}
  for _, op in ipairs(pending) do
    local ph = home(op[4])
    if not ph then
      table.insert(rest, op)
    else
      local cur = home(op[2])
      if not cur then
        homes[op[2]] = ph
        new_homes[op[2]] = ph
      elseif cur ~= ph then
        return fail("FAILED", "tenant-boundary", op[2] .. " belongs to " .. cur ..
          "; it cannot move under " .. op[4] .. " in " .. ph)
      end
      progress = true
    end
  end
  pending = rest
end
for _, op in ipairs(b.ops) do
  if not home(op[2]) and (op[1] == "t" or op[1] == "p") then
    return fail("FAILED", "parent-required", op[2] ..
      " has no parent; write its #parent relationship first or in the same batch")
  end
end

-- 2b. a relationship stays within one tenant (subjects: same scope or global)
for _, op in ipairs(b.ops) do
  if op[1] == "t" and op[3] ~= "parent" and kinds[tname(op[4])] ~= "global" then
    local sh = home(op[4])
    if not sh then
      return fail("FAILED", "parent-required", op[4] .. " has no parent; write its #parent " ..
        "relationship before it is the subject of a relationship, or in the same batch")
    end
    local rh = homes[op[2]]
    if sh ~= rh then
      return fail("FAILED", "tenant-boundary", op[2] .. "#" .. op[3] .. "@" .. op[4] ..
        " links " .. rh .. " to " .. op[4] .. " in " .. sh ..
        "; a relationship stays within one tenant")
    end
  end
end

-- 3. forward sets as the batch would leave them
local final, final_order = {}, {}
for _, op in ipairs(b.ops) do
  if (op[1] == "t" or op[1] == "d") and home(op[2]) then
    local k = op[2] .. "#" .. op[3]
    if not final[k] then
      final[k] = {res = op[2], rel = op[3], subs = {}, order = {}}
      table.insert(final_order, k)
    end
    if final[k].subs[op[4]] == nil then table.insert(final[k].order, op[4]) end
    final[k].subs[op[4]] = (op[1] == "t")
  end
end
local function final_count(f)
  local n = redis.call("SCARD", fkey(homes[f.res], f.res, f.rel))
  for _, s in ipairs(f.order) do
    local was = redis.call("SISMEMBER", fkey(homes[f.res], f.res, f.rel), s) == 1
    if f.subs[s] and not was then n = n + 1 end
    if (not f.subs[s]) and was then n = n - 1 end
  end
  return n
end

-- 4. one parent at most
for _, k in ipairs(final_order) do
  local f = final[k]
  if f.rel == "parent" and final_count(f) > 1 then
    return fail("FAILED", "single-parent", f.res ..
      " would have more than one parent; delete the old parent in the same batch to move it")
  end
end

-- 5. policy constraints
for _, c in ipairs(b.cons) do
  if c.k == "mx" then
    for _, k in ipairs(final_order) do
      local f = final[k]
      if f.rel == c.r and tname(f.res) == c.t then
        local n = final_count(f)
        if n > c.m then
          return fail("FAILED", c.n, f.res .. "#" .. f.rel .. " would have " .. n ..
            " subjects; at most " .. c.m .. " allowed")
        end
      end
    end
  elseif c.k == "un" then
    local scopes = {}
    for _, k in ipairs(final_order) do
      local f = final[k]
      if f.rel == c.r and tname(f.res) == c.t then scopes[homes[f.res]] = true end
    end
    for scope, _ in pairs(scopes) do
      local holders = {}
      for _, r in ipairs(redis.call("SMEMBERS", scoped(scope, "t:" .. c.t .. "#" .. c.r))) do
        holders[r] = true
      end
      for _, k in ipairs(final_order) do
        local f = final[k]
        if f.rel == c.r and tname(f.res) == c.t and homes[f.res] == scope then
          holders[f.res] = (final_count(f) > 0) or nil
        end
      end
      local names = {}
      for r, _ in pairs(holders) do table.insert(names, r) end
      if #names > 1 then
        table.sort(names)
        return fail("FAILED", c.n, "only one " .. c.t .. " per tenant may hold '" .. c.r ..
          "'; " .. table.concat(names, ", ") .. " would")
      end
    end
  elseif c.k == "ex" then
    local left, right = {}, {}
    for _, x in ipairs(c.l) do left[x] = true end
    for _, x in ipairs(c.r) do right[x] = true end
    local touched, touched_order = {}, {}
    for _, k in ipairs(final_order) do
      local f = final[k]
      local tr = tname(f.res) .. "." .. f.rel
      if left[tr] or right[tr] then
        for _, s in ipairs(f.order) do
          if f.subs[s] then
            local key = homes[f.res] .. "\n" .. s
            if not touched[key] then
              touched[key] = {scope = homes[f.res], subj = s}
              table.insert(touched_order, key)
            end
          end
        end
      end
    end
    for _, key in ipairs(touched_order) do
      local t = touched[key]
      local entries = {}
      for _, e in ipairs(redis.call("SMEMBERS", scoped(t.scope, "s:" .. t.subj))) do
        entries[e] = true
      end
      for _, k in ipairs(final_order) do
        local f = final[k]
        if f.subs[t.subj] ~= nil and homes[f.res] == t.scope then
          entries[f.res .. "#" .. f.rel] = f.subs[t.subj] or nil
        end
      end
      local hl, hr = {}, {}
      for e, _ in pairs(entries) do
        local res, rel = string.match(e, "^(.*)#([^#]*)$")
        local tr = tname(res) .. "." .. rel
        if left[tr] then table.insert(hl, tr) end
        if right[tr] then table.insert(hr, tr) end
      end
      if #hl > 0 and #hr > 0 then
        table.sort(hl); table.sort(hr)
        return fail("FAILED", c.n, t.subj .. " cannot hold " .. hl[1] .. " and " .. hr[1] ..
          " in " .. t.scope .. ": these roles are mutually exclusive")
      end
    end
  end
end

-- 6. a deleted object is referenced by no relationship after the batch
local rels_of = b.rels or {}
for _, op in ipairs(b.ops) do
  if op[1] == "x" then
    local key = op[2]
    local t = tname(key)
    local count = 0
    local own = home(key)
    if own then
      for _, r in ipairs(rels_of[t] or {}) do
        local f = final[key .. "#" .. r]
        if f then
          count = count + final_count(f)
        else
          count = count + redis.call("SCARD", fkey(own, key, r))
        end
      end
    end
    local scopes, scope_list = {}, {}
    local function add_scope(sc)
      if sc and not scopes[sc] then scopes[sc] = true; table.insert(scope_list, sc) end
    end
    if kinds[t] == "global" then
      for _, sc in ipairs(redis.call("SMEMBERS", P .. ":scopes")) do add_scope(sc) end
      for _, k in ipairs(final_order) do
        if final[k].subs[key] ~= nil then add_scope(homes[final[k].res]) end
      end
    else
      add_scope(own)
    end
    for _, sc in ipairs(scope_list) do
      local sk = scoped(sc, "s:" .. key)
      local n = redis.call("SCARD", sk)
      for _, k in ipairs(final_order) do
        local f = final[k]
        if f.subs[key] ~= nil and homes[f.res] == sc then
          local was = redis.call("SISMEMBER", sk, f.res .. "#" .. f.rel) == 1
          if f.subs[key] and not was then n = n + 1 end
          if (not f.subs[key]) and was then n = n - 1 end
        end
      end
      count = count + n
    end
    if count > 0 then
      return fail("FAILED", "object-in-use", key .. " is still in " .. count ..
        " relationship(s); delete them first or in the same batch")
    end
  end
end

-- 7. apply
if redis.call("HSETNX", P .. ":meta", "epoch", ARGV[3]) == 1 then
  redis.call("SET", P .. ":rev", 0)
end
for k, h in pairs(new_homes) do redis.call("HSET", P .. ":home", k, h) end
local effective = {}
for _, op in ipairs(b.ops) do
  local kind = op[1]
  if kind == "t" or kind == "d" then
    local h = home(op[2])
    if h then
      local res, rel, subj = op[2], op[3], op[4]
      local fk = fkey(h, res, rel)
      if kind == "t" then
        if redis.call("SADD", fk, subj) == 1 then
          redis.call("SADD", scoped(h, "rels"), res .. "#" .. rel .. "@" .. subj)
          redis.call("SADD", scoped(h, "s:" .. subj), res .. "#" .. rel)
          redis.call("SADD", scoped(h, "t:" .. tname(res) .. "#" .. rel), res)
          redis.call("SADD", P .. ":scopes", h)
          table.insert(effective, op)
        end
      else
        if redis.call("SREM", fk, subj) == 1 then
          redis.call("SREM", scoped(h, "rels"), res .. "#" .. rel .. "@" .. subj)
          redis.call("SREM", scoped(h, "s:" .. subj), res .. "#" .. rel)
          if redis.call("SCARD", fk) == 0 then
            redis.call("SREM", scoped(h, "t:" .. tname(res) .. "#" .. rel), res)
          end
          table.insert(effective, op)
        end
      end
    end
  elseif kind == "p" then
    local h = home(op[2])
    if redis.call("HGET", scoped(h, "objs"), op[2]) ~= op[3] then
      redis.call("HSET", scoped(h, "objs"), op[2], op[3])
      redis.call("SADD", P .. ":scopes", h)
      table.insert(effective, op)
    end
  elseif kind == "x" then
    local h = home(op[2])
    if h and redis.call("HDEL", scoped(h, "objs"), op[2]) == 1 then
      table.insert(effective, op)
    end
  end
end
if #effective == 0 then
  return {tonumber(redis.call("GET", P .. ":rev") or "0"), 0}
end
local rev = redis.call("INCR", P .. ":rev")
local now = redis.call("TIME")
redis.call("XADD", P .. ":log", "MAXLEN", "~", b.maxlen, rev .. "-1", "ops",
  cjson.encode(effective), "ts", now[1] .. string.format(".%06d", tonumber(now[2])))
return {rev, 1}

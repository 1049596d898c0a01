-- gatehouse: atomic graph writes, one batch after the other. Mirrors
-- gatehouse/graph/plan.py step by step; nothing of a batch is written until
-- every check of that batch has passed. (plan.check_batch,
-- which refuses a batch naming one target twice, depends on the batch alone
-- and runs in Python before this script.)
--
-- ARGV[1]  key prefix (e.g. "gh")
-- ARGV[2]  epoch to set if Redis holds none (a fresh or wiped server)
-- ARGV[3]  the policy's write rules, as JSON, read once for the whole call:
--          {kinds, rels, cons, ar}
--   kinds: {type: "root"|"child"|"global"}
--   rels:  {type: [relation, ...]}  (what an object of the type may hold)
--   cons:  {k="mx", n, t, r, m} | {k="un", n, t, r} | {k="ex", n, l=[...], r=[...]}
--          | {k="ps", n, t, r, m} (per subject) | {k="rq", n, l=relations, r=needs}
--          | {k="ms", n, t, r, c} (minimum subjects) | {k="mc", n, t, c} (minimum children)
--   ar:   {type: [[attribute, immutable (1|0), unique (1|0)], ...]}  (attribute rules)
-- ARGV[4..] one write batch each, as JSON: {ops, pre, maxlen, n}
--   n:    a fresh random id: the batch's changelog entry id (each entry names the
--         entry before it as "p", within a call too)
--   ops:  ["t"|"d", res, rel, subj] | ["p", obj, attrs_json] | ["x", obj]
--   pre:  [must_exist (1|0), res, rel, subj] | [2, tenant, revision] (tenant unchanged)
-- Replies per batch (run_items, gatehouse/redisscript.py): {"ok", revision,
-- changed}: the new revision and 1, or, when the batch changes nothing, the
-- current revision and 0 (nothing committed or logged); or {"err", message}
-- with "GH <KIND> <name>\t<message>" for a batch refused by a check. Each
-- batch is committed (its own revision, its own changelog entry) or refused
-- on its own.

local P = ARGV[1]
local EPOCH = ARGV[2]
local RULES = cjson.decode(ARGV[3])
-- Read once per call: whether the epoch is there, and the id of the last
-- changelog entry (each batch of the call then follows the one before it).
local epoch_known = false
local last_entry = nil

local function write_one(arg)
  local b = cjson.decode(arg)
  local kinds = RULES.kinds
  local GLOBAL = "_"

  local function fail(kind, name, msg)
    return redis.error_reply("GH " .. kind .. " " .. name .. "\t" .. msg)
  end
  local function tname(key) return string.match(key, "^([^:]+):") end
  local function scoped(scope, suffix) return P .. ":{" .. scope .. "}:" .. suffix end
  local function fkey(scope, res, rel) return scoped(scope, "f:" .. res .. "#" .. rel) end
  local function ukey(scope, t, attr) return scoped(scope, "u:" .. t .. "." .. attr) end
  local function quote(v)
    if #v <= 48 then return "'" .. v .. "'" end
    return "'" .. string.sub(v, 1, 48) .. "'... (" .. #v .. " characters)"
  end
  -- attribute values equal as decoded JSON (plan.same_value)
  local function same(a, x)
    if type(a) ~= type(x) then return false end
    if type(a) ~= "table" then return a == x end
    for k, v in pairs(a) do if not same(v, x[k]) then return false end end
    for k, _ in pairs(x) do if a[k] == nil then return false end end
    return true
  end
  local function shown(v)
    if type(v) == "string" then return quote(v) end
    if type(v) == "table" then return quote(cjson.encode(v)) end
    return quote(tostring(v))
  end

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

  -- 1. preconditions, in their order
  for _, pre in ipairs(b.pre) do
    if pre[1] == 2 then
      local last = tonumber(redis.call("GET", scoped(pre[2], "rev")) or "0")
      if last > pre[3] then
        return fail("ABORTED", "precondition", "precondition failed: tenant " .. pre[2] ..
          " changed at revision " .. last .. ", after " .. string.format("%d", pre[3]) ..
          "; read again and decide again")
      end
    else
      local exists = is_member(pre[2], pre[3], pre[4])
      if exists ~= (pre[1] == 1) then
        local rel = pre[2] .. "#" .. pre[3] .. "@" .. pre[4]
        return fail("ABORTED", "precondition", "precondition failed: " .. rel ..
          (pre[1] == 1 and " does not exist" or " exists"))
      end
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

  local deleted = {}
  for _, op in ipairs(b.ops) do
    if op[1] == "x" then deleted[op[2]] = true end
  end
  -- res#rel of every relationship subj would hold within scope
  local function final_entries(scope, subj)
    local entries = {}
    for _, e in ipairs(redis.call("SMEMBERS", scoped(scope, "s:" .. subj))) do
      entries[e] = true
    end
    for _, k in ipairs(final_order) do
      local f = final[k]
      if f.subs[subj] ~= nil and homes[f.res] == scope then
        entries[f.res .. "#" .. f.rel] = f.subs[subj] or nil
      end
    end
    return entries
  end
  -- type.relation of each of those entries
  local function held_relations(scope, subj)
    local held = {}
    for e, _ in pairs(final_entries(scope, subj)) do
      local res, rel = string.match(e, "^(.*)#([^#]*)$")
      held[tname(res) .. "." .. rel] = true
    end
    return held
  end
  -- (scope, subject) pairs, sorted, for which want(type.relation, present) holds
  local function touched_subjects(want)
    local touched, order = {}, {}
    for _, k in ipairs(final_order) do
      local f = final[k]
      local tr = tname(f.res) .. "." .. f.rel
      for _, s in ipairs(f.order) do
        if want(tr, f.subs[s]) then
          local key = homes[f.res] .. "\n" .. s
          if not touched[key] then
            touched[key] = {scope = homes[f.res], subj = s}
            table.insert(order, touched[key])
          end
        end
      end
    end
    table.sort(order, function(x, y)
      if x.scope ~= y.scope then return x.scope < y.scope end
      return x.subj < y.subj
    end)
    return order
  end
  local function sorted_keys(set)
    local out = {}
    for k, _ in pairs(set) do table.insert(out, k) end
    table.sort(out)
    return out
  end
  local function in_set(tr, set) return set[tr] == true end

  -- 5. policy constraints
  for _, c in ipairs(RULES.cons) do
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
      local touched = touched_subjects(function(tr, present)
        return present and (left[tr] or right[tr]) or false
      end)
      for _, t in ipairs(touched) do
        local hl, hr = {}, {}
        for tr, _ in pairs(held_relations(t.scope, t.subj)) do
          if left[tr] then hl[tr] = true end
          if right[tr] then hr[tr] = true end
        end
        hl, hr = sorted_keys(hl), sorted_keys(hr)
        if #hl > 0 and #hr > 0 then
          return fail("FAILED", c.n, t.subj .. " cannot hold " .. hl[1] .. " and " .. hr[1] ..
            " in " .. t.scope .. ": these roles are mutually exclusive")
        end
      end
    elseif c.k == "ps" then
      local want = c.t .. "." .. c.r
      local touched = touched_subjects(function(tr, present) return present and tr == want end)
      for _, t in ipairs(touched) do
        local n = 0
        for e, _ in pairs(final_entries(t.scope, t.subj)) do
          local res, rel = string.match(e, "^(.*)#([^#]*)$")
          if rel == c.r and tname(res) == c.t then n = n + 1 end
        end
        if n > c.m then
          return fail("FAILED", c.n, t.subj .. " would hold " .. want .. " on " .. n ..
            " objects in " .. t.scope .. "; at most " .. c.m .. " allowed")
        end
      end
    elseif c.k == "rq" then
      local rels, needs = {}, {}
      for _, x in ipairs(c.l) do rels[x] = true end
      for _, x in ipairs(c.r) do needs[x] = true end
      local touched = touched_subjects(function(tr, present)
        if rels[tr] then return present end
        if needs[tr] then return not present end
        return false
      end)
      for _, t in ipairs(touched) do
        local held = held_relations(t.scope, t.subj)
        local has, missing = {}, true
        for tr, _ in pairs(held) do
          if rels[tr] then has[tr] = true end
          if needs[tr] then missing = false end
        end
        has = sorted_keys(has)
        if #has > 0 and missing then
          return fail("FAILED", c.n, t.subj .. " would hold " .. has[1] .. " in " .. t.scope ..
            " without any of " .. table.concat(c.r, ", "))
        end
      end
    elseif c.k == "ms" then
      for _, k in ipairs(final_order) do
        local f = final[k]
        if f.rel == c.r and tname(f.res) == c.t and not deleted[f.res] then
          local before = redis.call("SCARD", fkey(homes[f.res], f.res, f.rel))
          local after = final_count(f)
          if after < c.c and c.c <= before then
            return fail("FAILED", c.n, f.res .. "#" .. f.rel .. " would have " .. after ..
              " subjects; it keeps at least " .. c.c)
          end
        end
      end
    elseif c.k == "mc" then
      local scopes = {}
      for _, k in ipairs(final_order) do
        local f = final[k]
        if f.rel == "parent" and tname(f.res) == c.t then scopes[homes[f.res]] = true end
      end
      for _, scope in ipairs(sorted_keys(scopes)) do
        local holders = {}
        local members = redis.call("SMEMBERS", scoped(scope, "t:" .. c.t .. "#parent"))
        local before = #members
        for _, r in ipairs(members) do holders[r] = true end
        for _, k in ipairs(final_order) do
          local f = final[k]
          if f.rel == "parent" and tname(f.res) == c.t and homes[f.res] == scope then
            holders[f.res] = (final_count(f) > 0) or nil
          end
        end
        local after = #sorted_keys(holders)
        if after < c.c and c.c <= before then
          return fail("FAILED", c.n, scope .. " would have " .. after .. " " .. c.t ..
            " object(s); it keeps at least " .. c.c)
        end
      end
    end
  end

  -- 5b. attribute rules (immutable; unique within the tenant) of the objects put or deleted
  local attr_rules = RULES.ar or {}
  local old_attrs = {}  -- object key -> decoded stored attributes (types with rules only)
  local claims, claim_order, released = {}, {}, {}
  for _, op in ipairs(b.ops) do
    local ar = (op[1] == "p" or op[1] == "x") and attr_rules[tname(op[2])] or nil
    local scope = ar and home(op[2])
    if ar and scope then
      local key, t = op[2], tname(op[2])
      local stored = redis.call("HGET", scoped(scope, "objs"), key)
      local old = stored and cjson.decode(stored) or {}
      old_attrs[key] = old
      local new = (op[1] == "p") and cjson.decode(op[3]) or nil
      for _, rule in ipairs(ar) do
        local name = rule[1]
        if rule[2] == 1 and new and old[name] ~= nil and
            (new[name] == nil or not same(old[name], new[name])) then
          return fail("FAILED", "immutable-attribute", key .. " " .. name .. " is " ..
            shown(old[name]) .. " and may not be changed or removed")
        end
        if rule[3] == 1 then
          local was, now = old[name], new and new[name] or nil
          if type(was) ~= "string" then was = nil end
          if type(now) ~= "string" then now = nil end
          if was ~= now then
            local base = scope .. "\n" .. t .. "\n" .. name .. "\n"
            if was then released[base .. was] = key end
            if now then
              local slot = base .. now
              if claims[slot] == nil then
                claims[slot] = {key = key, scope = scope, t = t, name = name, value = now}
                table.insert(claim_order, slot)
              elseif claims[slot].key ~= key then
                return fail("FAILED", "unique-attribute", key .. " " .. name .. " " ..
                  quote(now) .. " is also written to " .. claims[slot].key ..
                  " in this batch; it is unique within " .. scope)
              end
            end
          end
        end
      end
    end
  end
  for _, slot in ipairs(claim_order) do
    local cl = claims[slot]
    local holder = redis.call("HGET", ukey(cl.scope, cl.t, cl.name), cl.value)
    local held = false
    if holder and holder ~= cl.key and released[slot] ~= holder then
      -- an entry the index kept while the policy had no such rule may be stale
      local stored = redis.call("HGET", scoped(cl.scope, "objs"), holder)
      held = stored and cjson.decode(stored)[cl.name] == cl.value or false
    end
    if held then
      return fail("FAILED", "unique-attribute", cl.key .. " " .. cl.name .. " " ..
        quote(cl.value) .. " is already held by " .. holder .. " in " .. cl.scope)
    end
  end
  -- move an object's unique values in the index from old to new attributes
  local function index_unique(scope, key, old, new)
    for _, rule in ipairs(attr_rules[tname(key)] or {}) do
      if rule[3] == 1 then
        local uk = ukey(scope, tname(key), rule[1])
        local was, now = old[rule[1]], new[rule[1]]
        if type(was) == "string" and was ~= now and redis.call("HGET", uk, was) == key then
          redis.call("HDEL", uk, was)
        end
        if type(now) == "string" then redis.call("HSET", uk, now, key) end
      end
    end
  end

  -- 6. a deleted object is referenced by no relationship after the batch
  local rels_of = RULES.rels or {}
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
  if not epoch_known then
    if redis.call("HSETNX", P .. ":meta", "epoch", EPOCH) == 1 then
      redis.call("SET", P .. ":rev", 0)
    end
    epoch_known = true
  end
  for k, h in pairs(new_homes) do redis.call("HSET", P .. ":home", k, h) end
  local effective = {}
  local changed = {}
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
            changed[h] = true
          end
        else
          if redis.call("SREM", fk, subj) == 1 then
            redis.call("SREM", scoped(h, "rels"), res .. "#" .. rel .. "@" .. subj)
            redis.call("SREM", scoped(h, "s:" .. subj), res .. "#" .. rel)
            if redis.call("SCARD", fk) == 0 then
              redis.call("SREM", scoped(h, "t:" .. tname(res) .. "#" .. rel), res)
            end
            table.insert(effective, op)
            changed[h] = true
          end
        end
      end
    elseif kind == "p" then
      local h = home(op[2])
      if redis.call("HGET", scoped(h, "objs"), op[2]) ~= op[3] then
        redis.call("HSET", scoped(h, "objs"), op[2], op[3])
        redis.call("SADD", P .. ":scopes", h)
        table.insert(effective, op)
        changed[h] = true
        if old_attrs[op[2]] then index_unique(h, op[2], old_attrs[op[2]], cjson.decode(op[3])) end
      end
    elseif kind == "x" then
      local h = home(op[2])
      if h and redis.call("HDEL", scoped(h, "objs"), op[2]) == 1 then
        table.insert(effective, op)
        changed[h] = true
        if old_attrs[op[2]] then index_unique(h, op[2], old_attrs[op[2]], {}) end
      end
    end
  end
  if #effective == 0 then
    return {tonumber(redis.call("GET", P .. ":rev") or "0"), 0}
  end
  local rev = redis.call("INCR", P .. ":rev")
  for scope, _ in pairs(changed) do
    if scope ~= GLOBAL then redis.call("SET", scoped(scope, "rev"), rev) end
  end
  local now = redis.call("TIME")
  -- Each entry is named by its batch's random id ("n") and names the entry it
  -- follows ("p"), kept with the revision in P:meta "tip": a follower that read
  -- revision R can tell whether the log it reads after a failover continues R.
  -- The tip is read once per call and kept here, so the batches of one call
  -- chain up as well.
  if last_entry == nil then
    local tip = redis.call("HGET", P .. ":meta", "tip")
    last_entry = tip and (string.match(tip, " (.*)$") or "") or ""
  end
  local follows = last_entry
  redis.call("HSET", P .. ":meta", "tip", rev .. " " .. b.n)
  last_entry = b.n
  redis.call("XADD", P .. ":log", "MAXLEN", "~", b.maxlen, rev .. "-1", "ops",
    cjson.encode(effective), "ts", now[1] .. string.format(".%06d", tonumber(now[2])),
    "n", b.n, "p", follows)
  return {rev, 1}
end

return run_items(4, write_one)

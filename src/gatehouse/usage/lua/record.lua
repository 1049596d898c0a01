-- gatehouse: record usage events, each once. Mirrors gatehouse/usage/memory.py.
-- ARGV[1]: prefix; ARGV[2..]: one event each, as JSON [org, event_id,
--   window_seconds, period, workspace, metric, aggregate, amount, dimension,
--   event_time, counter_max] (one argument per event, as packing many small
--   arguments costs the client more)
-- Replies per event (run_items, gatehouse/redisscript.py): {"ok", 1} if the
-- event id was already seen within the window (nothing changed), else {"ok", 0}.
local P = ARGV[1]
local sep = "\31"

local function fold(tag, a)
  local period, ws, metric, agg, amount, dim, t = a[4], a[5], a[6], a[7], a[8], a[9], a[10]
  local cap = tonumber(a[11])
  local h = tag .. "u:" .. period
  local vf = "v" .. sep .. ws .. sep .. metric
  if agg == "count" then
    redis.call("HINCRBYFLOAT", h, vf, 1)
  elseif agg == "sum" then
    -- A counter never grows past cap (limits.py: counter_max); it saturates there.
    local v = tonumber(redis.call("HINCRBYFLOAT", h, vf, amount))
    if v > cap then redis.call("HSET", h, vf, a[11]) end
  elseif agg == "max" then
    local cur = tonumber(redis.call("HGET", h, vf))
    if not cur or tonumber(amount) > cur then redis.call("HSET", h, vf, amount) end
  elseif agg == "distinct" then
    redis.call("HSET", h, "d" .. sep .. ws .. sep .. metric .. sep .. dim, "1")
  elseif agg == "latest" then
    local lf = "l" .. sep .. ws .. sep .. metric .. sep .. dim
    local cur = redis.call("HGET", h, lf)
    if cur then
      local seen = tonumber(string.match(cur, "^(%S+)"))
      if tonumber(t) <= seen then return end
    end
    redis.call("HSET", h, lf, t .. " " .. amount)
  end
end

local function record(arg)
  local a = cjson.decode(arg)
  local org, id, window = a[1], a[2], a[3]
  local tag = P .. ":{" .. org .. "}:"
  local seen = tag .. "ev:" .. id
  -- GET, not EXISTS: the documented ACL (docs/redis-production.md) grants +get.
  if redis.call("GET", seen) then
    return 1
  end
  -- The id is marked seen only after the fold succeeded: an event whose fold
  -- failed (a Redis error) is not acknowledged, and its retry must count.
  fold(tag, a)
  redis.call("SET", seen, "1", "EX", window)
  return 0
end

return run_items(2, record)

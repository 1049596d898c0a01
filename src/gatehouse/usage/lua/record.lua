-- gatehouse: record one usage event, once. Mirrors gatehouse/usage/memory.py.
-- ARGV: prefix, org, event_id, window_seconds, period, workspace, metric,
--       aggregate, amount, dimension, event_time
-- Returns 1 if the event id was already seen within the window (nothing
-- changed), else 0.
local P, org, id, window, period = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local ws, metric, agg, amount, dim, t = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local tag = P .. ":{" .. org .. "}:"
if not redis.call("SET", tag .. "ev:" .. id, "1", "NX", "EX", window) then
  return 1
end
local h = tag .. "u:" .. period
local sep = "\31"
local vf = "v" .. sep .. ws .. sep .. metric
if agg == "count" then
  redis.call("HINCRBYFLOAT", h, vf, 1)
elseif agg == "sum" then
  redis.call("HINCRBYFLOAT", h, vf, amount)
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
    if tonumber(t) <= seen then return 0 end
  end
  redis.call("HSET", h, lf, t .. " " .. amount)
end
return 0

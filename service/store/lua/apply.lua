-- Apply one event to a customer hash, exactly once. Twin of segmentation/profile.py:apply_event.
-- KEYS[1]  customer hash
-- ARGV[1]  "<partition> <offset> <kind> <day> <occurred_ms> <oldest day kept> <ring size>"
--          kind: p(urchase) r(efund) e(ngagement); day: UTC epoch day of occurred_at
--          (few arguments: packing each one costs the client more than parsing costs here)
-- ARGV[2]  totals as CSV of integers (trailing zeros may be omitted)
-- ARGV[3]  event id hash (8 bytes)
-- Returns 1 applied, 0 skipped (offset at or below the watermark), 2 skipped (event id seen).
local key = KEYS[1]
local partition, offset_s, kind, day_s, ts_s, min_day_s, ring_s =
  string.match(ARGV[1], '^(%d+) (%d+) (%a) (%-?%d+) (%-?%d+) (%-?%d+) (%d+)$')
local offset = tonumber(offset_s)

-- 1. Fence: a customer's events come from one partition in offset order, so anything at or
--    below the last applied offset of that partition was applied already (replay, zombie).
local w = redis.call('HGET', key, 'w')
if w then
  local sep = string.find(w, ':', 1, true)
  if string.sub(w, 1, sep - 1) == partition and tonumber(string.sub(w, sep + 1)) >= offset then
    return 0
  end
end
local mark = partition .. ':' .. offset_s

-- 2. Producer duplicates arrive at new offsets: a ring of recent event id hashes catches them.
local h = ARGV[3]
local ring = redis.call('HGET', key, 'r') or ''
for i = 1, #ring, 8 do
  if string.sub(ring, i, i + 7) == h then
    redis.call('HSET', key, 'w', mark)
    return 2
  end
end
ring = h .. ring
local cap = tonumber(ring_s) * 8
if #ring > cap then ring = string.sub(ring, 1, cap) end

local delta = {}
for n in string.gmatch(ARGV[2], '[^,]+') do delta[#delta + 1] = tonumber(n) end

-- Adds the delta to a CSV field; returns true when the field did not exist.
local function add(field)
  local cur = redis.call('HGET', key, field)
  if not cur then
    redis.call('HSET', key, field, ARGV[2])
    return true
  end
  local sum = {}
  for n in string.gmatch(cur, '[^,]+') do sum[#sum + 1] = tonumber(n) end
  local len = math.max(#sum, #delta)
  local out = {}
  local last = 0
  for i = 1, len do
    local v = (sum[i] or 0) + (delta[i] or 0)
    out[i] = string.format('%.0f', v)
    if v ~= 0 then last = i end
  end
  redis.call('HSET', key, field, table.concat(out, ',', 1, math.max(last, 1)))
  return false
end

add('L')
local day = tonumber(day_s)
local min_day = tonumber(min_day_s)
if day >= min_day then
  if add('d:' .. day_s) then
    -- A new bucket: drop the ones that left the longest window.
    local fields = redis.call('HKEYS', key)
    for _, f in ipairs(fields) do
      if string.sub(f, 1, 2) == 'd:' and tonumber(string.sub(f, 3)) < min_day then
        redis.call('HDEL', key, f)
      end
    end
  end
end

local ts = tonumber(ts_s)
if kind == 'p' then
  local first = tonumber(redis.call('HGET', key, 'f') or '')
  if not first or ts < first then redis.call('HSET', key, 'f', ts_s) end
  local last = tonumber(redis.call('HGET', key, 'l') or '')
  if not last or ts > last then redis.call('HSET', key, 'l', ts_s) end
elseif kind == 'e' then
  local engaged = tonumber(redis.call('HGET', key, 'e') or '')
  if not engaged or ts > engaged then redis.call('HSET', key, 'e', ts_s) end
end

redis.call('HSET', key, 'w', mark, 'r', ring)
redis.call('HINCRBY', key, 'v', 1)
return 1

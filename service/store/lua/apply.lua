-- Apply one event to a customer hash, exactly once. Twin of segmentation/profile.py:apply_event.
-- KEYS[1]  customer hash
-- ARGV[1]  "<partition> <offset> <before> <kind> <day> <occurred_ms> <oldest day kept> <ring size>"
--          kind: p(urchase) r(efund) e(ngagement); day: UTC epoch day of occurred_at;
--          before: the offset of this customer's previous event in the same pipeline (same
--          partition), or -1 (few arguments: packing each one costs the client more than
--          parsing costs here)
-- ARGV[2]  totals as CSV of integers (trailing zeros may be omitted)
-- ARGV[3]  event id hash (8 bytes)
-- Returns 4 * revision_before + outcome, outcome 1 applied, 0 skipped (offset at or below the
-- watermark), 2 skipped (event id seen), 3 skipped (the customer was erased: its hash is an
-- erase tombstone, field `x`, see erase.lua, which expires after its retention). The revision
-- before lets a client that keeps the decoded customer check that no one else changed it since
-- (RedisProfileStore's cache).
-- Returns -1, changing nothing, when the event `before` did not run: a pipeline ran only in
-- part (NOSCRIPT answered its first calls, then another client loaded the script). Applying
-- this event would move the watermark past the earlier one and fence it out for good; the
-- client sends the whole pipeline again instead, in order.
-- One HMGET in, one HSET out: each redis.call costs more than the Lua around it.
local key = KEYS[1]
local partition, offset_s, before_s, kind, day_s, ts_s, min_day_s, ring_s =
  string.match(ARGV[1], '^(%d+) (%d+) (%-?%d+) (%a) (%-?%d+) (%-?%d+) (%-?%d+) (%d+)$')
local offset = tonumber(offset_s)
local day = tonumber(day_s)
local min_day = tonumber(min_day_s)
local bucket = 'd:' .. day_s
local cur = redis.call('HMGET', key, 'w', 'r', 'L', bucket, 'f', 'l', 'e', 'v', 'x')
local w, ring, life, day_totals, first, last, engaged, rev =
  cur[1], cur[2] or '', cur[3], cur[4], cur[5], cur[6], cur[7], tonumber(cur[8]) or 0
local tagged = rev * 4

-- 0. Erased: a tombstone stands in for the customer; nothing may re-create it while it lives.
if cur[9] then return tagged + 3 end

-- 1. Fence: a customer's events come from one partition in offset order, so anything at or
--    below the last applied offset of that partition was applied already (replay, zombie).
local w_offset = -1
if w then
  local sep = string.find(w, ':', 1, true)
  if string.sub(w, 1, sep - 1) == partition then w_offset = tonumber(string.sub(w, sep + 1)) end
  if w_offset >= offset then return tagged end
end
-- 1b. In order: the customer's previous event of this pipeline ran (applied or skipped, either
--     way the watermark is at or past it), or this one must not run either.
if w_offset < tonumber(before_s) then return -1 end
local mark = partition .. ':' .. offset_s

-- 2. Producer duplicates arrive at new offsets: a ring of recent event id hashes catches them.
local h = ARGV[3]
for i = 1, #ring, 8 do
  if string.sub(ring, i, i + 7) == h then
    redis.call('HSET', key, 'w', mark)
    return tagged + 2
  end
end
ring = h .. ring
local cap = tonumber(ring_s) * 8
if #ring > cap then ring = string.sub(ring, 1, cap) end

local delta = {}
for n in string.gmatch(ARGV[2], '[^,]+') do delta[#delta + 1] = tonumber(n) end

-- The CSV sum of a stored value and the delta (the delta itself when there is none).
local function add(stored)
  if not stored then return ARGV[2] end
  local sum = {}
  for n in string.gmatch(stored, '[^,]+') do sum[#sum + 1] = tonumber(n) end
  local len = math.max(#sum, #delta)
  local out = {}
  local last_nonzero = 1
  for i = 1, len do
    local v = (sum[i] or 0) + (delta[i] or 0)
    out[i] = string.format('%.0f', v)
    if v ~= 0 then last_nonzero = i end
  end
  return table.concat(out, ',', 1, last_nonzero)
end

local set = {'w', mark, 'r', ring, 'L', add(life), 'v', tostring(rev + 1)}
-- Buckets that left the longest window are not dropped here (that would mean scanning the
-- hash on every new day): the consumer sees them when it reads the customer back and deletes
-- them in the same pipeline as the segment write (RedisProfileStore.write_segments).
if day >= min_day then
  set[#set + 1] = bucket
  set[#set + 1] = add(day_totals)
end

local ts = tonumber(ts_s)
if kind == 'p' then
  if not first or ts < tonumber(first) then set[#set + 1] = 'f'; set[#set + 1] = ts_s end
  if not last or ts > tonumber(last) then set[#set + 1] = 'l'; set[#set + 1] = ts_s end
elseif kind == 'e' then
  if not engaged or ts > tonumber(engaged) then set[#set + 1] = 'e'; set[#set + 1] = ts_s end
end
redis.call('HSET', key, unpack(set))
return tagged + 1

-- Apply a customer's events of one pipeline, in order, each exactly once. Twin of
-- segmentation/profile.py:apply_event, folded once per event.
-- KEYS[1]  customer hash
-- ARGV[1]  "<oldest day kept> <ring size>[ 1]": with " 1", the customer is read back after the
--          apply, as one more reply (see readback below)
-- then one argument per event, in the customer's order, 105 bytes packed little-endian
-- (RedisProfileStore's _EVENT): partition (int32), offset (int64), kind (1 byte: p(urchase)
-- r(efund) e(ngagement)), day (int32, UTC epoch day of occurred_at), occurred_ms (int64), the
-- nine totals (int64 each, Totals order), the event id hash (8 bytes). Binary, not text: one
-- struct.unpack here and one struct.pack in the client, where parsing and formatting numbers
-- cost the most on both sides.
-- Returns one number per event (then the read-back, when asked):
-- 4 * revision_before + outcome, outcome 1 applied, 0 skipped
-- (offset at or below the watermark), 2 skipped (event id seen), 3 skipped (the customer was
-- erased: its hash is an erase tombstone, field `x`, see erase.lua, which expires after its
-- retention). The revision before each event lets a client that keeps the decoded customer
-- check that no one else changed it since (RedisProfileStore's cache).
--
-- One call per customer per pipeline (RedisProfileStore._apply_send groups them): a pipeline
-- that runs only in part (NOSCRIPT, then another client loads the script) never runs a
-- customer's later events without its earlier ones, and a customer with many events in a batch
-- costs one HMGET, one parse of its lifetime totals and one HSET, not one of each per event.
-- Numbers cost more than anything else here (a parse or a format is ~0.3 µs in Redis's Lua):
-- each stored CSV is parsed at most once per call, written once, and zeros are never formatted.
local key = KEYS[1]
local min_day_s, ring_s, read_s = string.match(ARGV[1], '^(%-?%d+) (%d+) ?(%d?)$')
local min_day = tonumber(min_day_s)
local cap = tonumber(ring_s) * 8
local n = #ARGV - 1
local find, sub, format, byte = string.find, string.sub, string.format, string.byte
local unpack_event = struct.unpack

-- The customer as it is now, for the client to classify: {json, g, m}, json being
-- [v, f, l, e, [lifetime totals], [[day, totals...], ...]] (null for an absent v, f, l or e;
-- buckets in no particular order). Built from the stored texts without parsing a number, so the
-- client decodes it in one JSON parse, where a plain HGETALL costs it a parse per field
-- (packing.decode_read_back; it falls back to HGETALL for anything it cannot parse).
local function readback()
  local all = redis.call('HGETALL', key)
  local v, f, l, e, lifetime, g, m = 'null', 'null', 'null', 'null', '', '', ''
  local rows, k = {}, 0
  for i = 1, #all, 2 do
    local name, value = all[i], all[i + 1]
    if byte(name, 1) == 100 and byte(name, 2) == 58 then -- 'd:'
      k = k + 1
      rows[k] = '[' .. sub(name, 3) .. ',' .. value .. ']'
    elseif name == 'L' then lifetime = value
    elseif name == 'v' then v = value
    elseif name == 'f' then f = value
    elseif name == 'l' then l = value
    elseif name == 'e' then e = value
    elseif name == 'g' then g = value
    elseif name == 'm' then m = value
    end
  end
  return {
    '[' .. v .. ',' .. f .. ',' .. l .. ',' .. e .. ',[' .. lifetime .. '],[' ..
      table.concat(rows, ',') .. ']]',
    g,
    m,
  }
end

local function finish(out)
  if read_s == '1' then out[#out + 1] = readback() end
  return out
end

-- Every event's position and day; every bucket the events touch is read in the same HMGET.
local parts, offsets, kinds, days, stamps, deltas, hashes = {}, {}, {}, {}, {}, {}, {}
local fields = {'w', 'r', 'L', 'f', 'l', 'e', 'v', 'x'}
local slot = {}
for i = 1, n do
  local p, o, kind, day, ts, t1, t2, t3, t4, t5, t6, t7, t8, t9, h =
    unpack_event('<i4i8c1i4i8i8i8i8i8i8i8i8i8i8c8', ARGV[i + 1])
  parts[i], offsets[i], kinds[i], stamps[i], hashes[i] = p, o, kind, ts, h
  deltas[i] = {t1, t2, t3, t4, t5, t6, t7, t8, t9}
  if day >= min_day then
    local b = format('d:%d', day)
    days[i] = b
    if not slot[b] then
      fields[#fields + 1] = b
      slot[b] = #fields
    end
  end
end
local cur = redis.call('HMGET', key, unpack(fields))
local rev = tonumber(cur[7]) or 0
local out = {}

-- 0. Erased: a tombstone stands in for the customer; nothing may re-create it while it lives.
if cur[8] then
  for i = 1, n do out[i] = rev * 4 + 3 end
  return finish(out)
end

local w_part, w_offset = nil, -1
if cur[1] then
  local sep = find(cur[1], ':', 1, true)
  w_part, w_offset = tonumber(sub(cur[1], 1, sep - 1)), tonumber(sub(cur[1], sep + 1))
end
local ring = cur[2] or ''
local first, last, engaged = tonumber(cur[4]), tonumber(cur[5]), tonumber(cur[6])

-- CSV of integers to a table of numbers: cjson's parser, in C, takes a third of the time of a
-- gmatch loop (integers are exact up to 2^53, as everywhere in Lua).
local decode = cjson.decode
local function parse(csv)
  return decode('[' .. csv .. ']')
end

-- Totals being summed, by field name: the stored value, parsed on first use.
local sums = {}
local function add(name, stored, delta)
  local t = sums[name]
  if not t then
    if not stored then
      t = {}
    else
      t = parse(stored)
    end
    sums[name] = t
  end
  for j = #t + 1, #delta do t[j] = 0 end -- no holes: # must be the width
  for j = 1, #delta do
    local d = delta[j]
    if d ~= 0 then t[j] = t[j] + d end
  end
end

local w_mark, applied = nil, false
local f_set, l_set, e_set = false, false, false
for i = 1, n do
  local tagged = rev * 4
  -- 1. Fence: a customer's events come from one partition in offset order, so anything at or
  --    below the last applied offset of that partition was applied already (replay, zombie).
  if parts[i] == w_part and w_offset >= offsets[i] then
    out[i] = tagged
  else
    w_part, w_offset, w_mark = parts[i], offsets[i], i
    -- 2. Producer duplicates arrive at new offsets: a ring of recent event id hashes.
    local h = hashes[i]
    -- (one plain find, not a string per slot: a hit counts only at a slot's start)
    local seen = find(ring, h, 1, true)
    while seen and seen % 8 ~= 1 do seen = find(ring, h, seen + 1, true) end
    if seen then
      out[i] = tagged + 2
    else
      ring = h .. ring
      if #ring > cap then ring = sub(ring, 1, cap) end
      local delta = deltas[i]
      add('L', cur[3], delta)
      local b = days[i]
      if b then add(b, cur[slot[b]], delta) end
      local ts, kind = stamps[i], kinds[i]
      if kind == 'p' then
        if not first or ts < first then first, f_set = ts, true end
        if not last or ts > last then last, l_set = ts, true end
      elseif kind == 'e' then
        if not engaged or ts > engaged then engaged, e_set = ts, true end
      end
      rev = rev + 1
      applied = true
      out[i] = tagged + 1
    end
  end
end

if not w_mark then return finish(out) end
local set = {'w', format('%d:%d', w_part, w_offset)}
if applied then
  set[#set + 1] = 'r'
  set[#set + 1] = ring
  set[#set + 1] = 'v'
  set[#set + 1] = tostring(rev)
  -- Buckets that left the longest window are not dropped here (that would mean scanning the
  -- hash on every new day): the consumer sees them when it reads the customer back and
  -- deletes them (RedisProfileStore.trim).
  for name, t in pairs(sums) do
    local len = #t
    local last_nonzero = 1
    local csv = {}
    for j = 1, len do
      local v = t[j]
      if v == 0 then
        csv[j] = '0'
      else
        csv[j] = format('%.0f', v)
        last_nonzero = j
      end
    end
    set[#set + 1] = name
    set[#set + 1] = table.concat(csv, ',', 1, last_nonzero)
  end
  if f_set then set[#set + 1] = 'f'; set[#set + 1] = format('%d', first) end
  if l_set then set[#set + 1] = 'l'; set[#set + 1] = format('%d', last) end
  if e_set then set[#set + 1] = 'e'; set[#set + 1] = format('%d', engaged) end
end
redis.call('HSET', key, unpack(set))
return finish(out)

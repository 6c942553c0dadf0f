-- Counts a batch of segment-change records once, whichever API worker reads them first.
-- KEYS[1]  watermark hash: partition -> last counted offset of the changes topic
-- ARGV[1]  key prefix of the buckets, e.g. "{stats}:chg:"
-- ARGV[2]  TTL of a minute bucket, seconds;  ARGV[3] TTL of an hour bucket, seconds
-- ARGV[4…] per record: partition, offset, epoch minute, epoch hour, n, then n hour fields
--          (the minute bucket gets "n" and the first field, "c:<cause>")
-- Records at or below a partition's watermark were counted by another worker: skipped.
-- Returns the number of records counted.
local wm = KEYS[1]
local prefix = ARGV[1]
local ttl_minute = tonumber(ARGV[2])
local ttl_hour = tonumber(ARGV[3])
local marks = {}
local touched = {}
local counted = 0
local i = 4
while i <= #ARGV do
    local partition = ARGV[i]
    local offset = tonumber(ARGV[i + 1])
    local minute_key = prefix .. 'm:' .. ARGV[i + 2]
    local hour_key = prefix .. 'h:' .. ARGV[i + 3]
    local n = tonumber(ARGV[i + 4])
    local last = marks[partition]
    if last == nil then
        last = tonumber(redis.call('HGET', wm, partition) or '-1')
    end
    if offset > last then
        marks[partition] = offset
        redis.call('HINCRBY', minute_key, 'n', 1)
        if n > 0 then
            redis.call('HINCRBY', minute_key, ARGV[i + 5], 1)
        end
        redis.call('HINCRBY', hour_key, 'n', 1)
        for j = 1, n do
            redis.call('HINCRBY', hour_key, ARGV[i + 4 + j], 1)
        end
        touched[minute_key] = ttl_minute
        touched[hour_key] = ttl_hour
        counted = counted + 1
    else
        marks[partition] = last
    end
    i = i + 5 + n
end
for partition, offset in pairs(marks) do
    redis.call('HSET', wm, partition, offset)
end
for key, ttl in pairs(touched) do
    redis.call('EXPIRE', key, ttl)
end
return counted

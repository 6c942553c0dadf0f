-- Write a customer's segmentation and its shard indexes, atomically and only if nothing
-- changed since the caller read the profile (compare-and-set on revision and segmentation).
-- KEYS[1] customer hash   KEYS[2] old segment's member set   KEYS[3] new segment's member set
-- KEYS[4] shard counts    KEYS[5] shard due index
-- ARGV[1] expected revision   ARGV[2] expected packed segmentation ('' = none)
-- ARGV[3] new packed segmentation ("<g>\n<m>": the g and m fields)
-- ARGV[4] old segment name ('' = none)   ARGV[5] new segment name
-- ARGV[6] next review, epoch ms ('' = never)   ARGV[7] customer id
-- Returns 1 written, 0 conflict (re-read and retry).
-- The revision moves on with every write, so any writer sees that another one wrote the
-- customer since it read it (a consumer keeps decoded customers in memory and relies on it).
if (redis.call('HGET', KEYS[1], 'v') or '') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'g') or '') ~= ARGV[2] then return 0 end
local nl = string.find(ARGV[3], '\n', 1, true)
redis.call('HSET', KEYS[1], 'g', string.sub(ARGV[3], 1, nl - 1), 'm', string.sub(ARGV[3], nl + 1),
  'v', tostring((tonumber(ARGV[1]) or 0) + 1))
if ARGV[4] ~= ARGV[5] then
  if ARGV[4] ~= '' then
    redis.call('SREM', KEYS[2], ARGV[7])
    redis.call('HINCRBY', KEYS[4], ARGV[4], -1)
  end
  redis.call('SADD', KEYS[3], ARGV[7])
  redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
end
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[5], ARGV[7])
else
  redis.call('ZADD', KEYS[5], ARGV[6], ARGV[7])
end
return 1

-- Drop a due entry whose customer has nothing left to review (erased, or never segmented),
-- only if the entry is still the one the sweeper read (a concurrent write may have renewed it).
-- KEYS[1] shard due index   KEYS[2] customer hash
-- ARGV[1] customer id   ARGV[2] the due time read, epoch ms
-- Returns 1 dropped, 0 kept.
if redis.call('HEXISTS', KEYS[2], 'g') == 1 then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1

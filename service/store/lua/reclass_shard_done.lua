-- Record one shard as re-classified for a version, unless a newer activation replaced the job.
-- KEYS[1] re-classification job hash   KEYS[2] shards done set
-- ARGV[1] version   ARGV[2] shard   ARGV[3] customers   ARGV[4] changes
-- ARGV[5] now (RFC 3339)   ARGV[6] shards in total
-- Returns 1 recorded, 0 already recorded or the job moved on.
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'customers', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'changes', ARGV[4])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[5])
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[5])
end
return 1

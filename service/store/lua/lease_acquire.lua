-- Take (or keep) the lease of one shard for one job.
-- KEYS[1] lease key ("<token> <owner>", expiring)   KEYS[2] fencing counter of the shard/job
-- ARGV[1] owner   ARGV[2] time to live, ms
-- Returns the fencing token held (> 0), or 0 when another owner holds the lease.
-- A fresh lease takes a new token from the counter, which only grows: whoever writes under a
-- lease can be refused once a later token exists.
local held = redis.call('GET', KEYS[1])
if held then
  local sp = string.find(held, ' ', 1, true)
  if string.sub(held, sp + 1) ~= ARGV[1] then return 0 end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(string.sub(held, 1, sp - 1))
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. ' ' .. ARGV[1], 'PX', ARGV[2])
return token

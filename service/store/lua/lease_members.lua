-- Announce a live worker of a job and count the live ones (Redis's clock: no skew between hosts).
-- KEYS[1] members sorted set (owner -> expiry, ms)
-- ARGV[1] owner   ARGV[2] time to live, ms ('0' = leave: remove the owner)
-- Returns the number of live members after the update.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[2] == '0' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('ZCARD', KEYS[1])

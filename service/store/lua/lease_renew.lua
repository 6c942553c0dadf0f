-- Extend a lease, only if it is still exactly the one the caller holds (same token and owner).
-- KEYS[1] lease key   ARGV[1] "<token> <owner>"   ARGV[2] time to live, ms
-- Returns 1 renewed, 0 lost (expired, or taken over meanwhile).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1

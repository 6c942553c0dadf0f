-- Give a lease up, only if it is still the caller's (never delete a successor's lease).
-- KEYS[1] lease key   ARGV[1] "<token> <owner>"
-- Returns 1 released, 0 not held.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1

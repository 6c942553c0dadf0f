-- Make a stored rules version the active one, atomically (all keys share the {rules} tag).
-- KEYS[1] active hash   KEYS[2] the version's document   KEYS[3] history list
-- KEYS[4] re-classification job hash   KEYS[5] shards done set
-- ARGV[1] version   ARGV[2] who   ARGV[3] when (RFC 3339)   ARGV[4] action (activate|rollback)
-- ARGV[5] history entries kept   ARGV[6] re-classification not before (epoch ms)
-- ARGV[7] version in effect when nothing was ever activated (the rules file's)
-- Returns {1, previous version} activated, {0, version} already active, {-1, ''} unknown version.
local prev = redis.call('HGET', KEYS[1], 'version')
if prev == ARGV[1] then return {0, prev} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1, ''} end
prev = prev or ARGV[7]
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'by', ARGV[2], 'at', ARGV[3],
  'action', ARGV[4], 'previous', prev)
redis.call('LPUSH', KEYS[3], cjson.encode({version = ARGV[1], by = ARGV[2], at = ARGV[3],
  action = ARGV[4], previous_version = prev}))
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('HSET', KEYS[4], 'version', ARGV[1], 'activated_at', ARGV[3],
  'not_before_ms', ARGV[6], 'customers', 0, 'changes', 0)
return {1, prev}

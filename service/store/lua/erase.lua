-- Erase one customer and its shard index entries, atomically (all keys share the shard's tag).
-- Serves the erase request (GDPR, with a tombstone) and data retention (without one).
-- KEYS[1] customer hash   KEYS[2] member set of the customer's segment (ARGV[2]; when there is
--         none, any key of the tag: it is not touched)   KEYS[3] shard counts   KEYS[4] due index
-- ARGV[1] expected packed segmentation, the `g` field the caller read ('' = none)
-- ARGV[2] segment name in it ('' = none)   ARGV[3] customer id
-- ARGV[4] expected revision ('' = any): retention deletes only what it judged inactive
-- ARGV[5] tombstone: erased-at epoch ms ('' = none)   ARGV[6] tombstone time to live, ms
-- Returns 1 erased, 2 nothing was stored (a tombstone is still written when asked),
-- 0 conflict: the segmentation or revision changed since the caller read them (re-read, retry).
-- The tombstone replaces the customer hash by a single field `x`; apply.lua skips any event of
-- a customer that has one (outcome 3), so a late event or a replay cannot re-create it.
local cur = redis.call('HMGET', KEYS[1], 'g', 'v')
local g, v = cur[1] or '', cur[2] or ''
if g ~= ARGV[1] then return 0 end
if ARGV[4] ~= '' and v ~= ARGV[4] then return 0 end
local id = ARGV[3]
if ARGV[2] ~= '' and redis.call('SREM', KEYS[2], id) == 1 then
  redis.call('HINCRBY', KEYS[3], ARGV[2], -1)
end
redis.call('ZREM', KEYS[4], id)
redis.call('DEL', KEYS[1])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'x', ARGV[5])
  redis.call('PEXPIRE', KEYS[1], ARGV[6])
end
if v == '' then return 2 end
return 1

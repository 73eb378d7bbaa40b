"""Lua scripts: each touches keys of one hash tag (or one stream), so they run on Redis Cluster."""

# Queue a job unless the stream already holds `cap` entries (workers XDEL what they ack, so
# XLEN is the backlog). KEYS: stream. ARGV: cap, field, value, ...
SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# Apply a step result atomically: only if the session still exists and is still at the step
# the worker computed from (compare-and-set), so a step is applied once even when two workers
# raced on the same job. Fields are set whole or patched in place (the ring-buffer slots a
# short chunk wrote). Stores the reply for retries, bumps the version, slides the TTL.
# Returns the new version, or 'gone' / 'conflict'.
# KEYS: meta, state, reply.
# ARGV: expected step, ttl, reply, reply ttl, n pairs, field, value, ...,
#       then triples field, byte offset, bytes.
COMMIT_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local cur = tonumber(redis.call('HGET', KEYS[2], 'step') or '0')
if cur ~= tonumber(ARGV[1]) then return 'conflict' end
local npairs = tonumber(ARGV[5])
local first = 6 + 2 * npairs
local bufs = {}
for i = first, #ARGV, 3 do  -- check every patch before writing anything: all or nothing
  local field, off, bytes = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  bufs[field] = bufs[field] or redis.call('HGET', KEYS[2], field)
  if (not bufs[field]) or #bufs[field] < off + #bytes then
    return redis.error_reply('patch outside the stored ' .. field)
  end
end
for i = first, #ARGV, 3 do
  local field, off, bytes = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local buf = bufs[field]
  bufs[field] = string.sub(buf, 1, off) .. bytes .. string.sub(buf, off + #bytes + 1)
end
for field, buf in pairs(bufs) do redis.call('HSET', KEYS[2], field, buf) end
if npairs > 0 then redis.call('HSET', KEYS[2], unpack(ARGV, 6, 5 + 2 * npairs)) end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
local ttl = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[4]))
return version
"""

# Slide the TTL of a session's keys if it exists. KEYS: meta, state. ARGV: none.
TOUCH = """
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
if ttl <= 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
return ttl
"""

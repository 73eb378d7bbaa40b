"""Lua scripts: each touches keys of one hash tag (or one stream), so they run on Redis Cluster."""

# Queue a job unless the stream already holds `cap` entries (workers XDEL what they ack, so
# XLEN is the backlog). KEYS: stream. ARGV: cap, field, value, ...
SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# Apply a step result atomically: only if the session still exists and is still at the step
# the worker computed from (compare-and-set), so a step is applied once even when two workers
# raced on the same job. Stores the reply for retries and slides the session's TTL.
# KEYS: meta, state, reply. ARGV: expected step, ttl, reply, reply ttl, field, value, ...
COMMIT_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local cur = tonumber(redis.call('HGET', KEYS[2], 'step') or '0')
if cur ~= tonumber(ARGV[1]) then return 'conflict' end
redis.call('HSET', KEYS[2], unpack(ARGV, 5))
redis.call('HINCRBY', KEYS[1], 'version', 1)
local ttl = tonumber(ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('SET', KEYS[3], ARGV[3], 'EX', tonumber(ARGV[4]))
return 'ok'
"""

# Slide the TTL of a session's keys if it exists. KEYS: meta, state. ARGV: none.
TOUCH = """
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
if ttl <= 0 then return 0 end
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
return ttl
"""

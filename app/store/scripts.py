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

# The server's clock (TIME), read on the node that holds KEYS[1]: on a cluster, each master
# stamps stream entry ids with its own clock. KEYS: a key of that node (named, not touched).
CLOCK = """
return redis.call('TIME')
"""

# Slide the TTL of a session's keys if it exists. KEYS: meta, then its other keys. ARGV: none.
TOUCH = """
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or '0')
if ttl <= 0 then return 0 end
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return ttl
"""

# VMA: append embedded exemplars to a session's memory (app.store.exemplars has the layout),
# all or nothing, at most once per job: a job whose reply is stored already gets that reply
# back (a re-delivered job adds nothing twice). Assigns the ids, bumps the version, slides
# the TTL and stores the reply. Returns the reply, or 'gone' when the session has ended.
# KEYS: meta, ex, reply.
# ARGV: ttl, reply ttl, capacity, job id, labels (JSON array), n, pixels, embeddings, dim, etag
# (a random token: with the version it keys the workers' memory caches, and unlike the version
# it never names two different memories, even after Redis lost writes and reused a version).
COMMIT_EXEMPLARS = """
local done = redis.call('GET', KEYS[3])
if done then return done end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local n_new, cap = tonumber(ARGV[6]), tonumber(ARGV[3])
local count = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
local reply
if count + n_new > cap then
  reply = cjson.encode({job = ARGV[4], ok = false, status = 409, slug = 'capacity-reached',
    detail = 'the session holds ' .. count .. ' of ' .. cap .. ' exemplars; ' .. n_new ..
      ' more do not fit: delete some or create a session with a larger capacity',
    extra = {capacity = cap, count = count}})
else
  local dim = redis.call('HGET', KEYS[2], 'dim')
  if dim and dim ~= ARGV[9] then return redis.error_reply('embedding size differs from the stored one') end
  local next_id = tonumber(redis.call('HGET', KEYS[2], 'next_id') or '0')
  local new_ids = {}
  for i = 0, n_new - 1 do new_ids[#new_ids + 1] = string.format('%d', next_id + i) end
  local ids_new = table.concat(new_ids, ',')
  local ids, labels
  if count == 0 then
    ids, labels = '[' .. ids_new .. ']', ARGV[5]
  else
    ids = string.sub(redis.call('HGET', KEYS[2], 'ids'), 1, -2) .. ',' .. ids_new .. ']'
    labels = string.sub(redis.call('HGET', KEYS[2], 'labels'), 1, -2) .. ',' .. string.sub(ARGV[5], 2)
  end
  local pix = (redis.call('HGET', KEYS[2], 'pix') or '') .. ARGV[7]
  local h = (redis.call('HGET', KEYS[2], 'h') or '') .. ARGV[8]
  redis.call('HSET', KEYS[2], 'ids', ids, 'labels', labels, 'pix', pix, 'h', h,
    'n', count + n_new, 'next_id', next_id + n_new, 'dim', ARGV[9])
  local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
  redis.call('HSET', KEYS[1], 'etag', ARGV[10])
  reply = '{"job":"' .. ARGV[4] .. '","ok":true}\\n{"ids":[' .. ids_new .. '],"count":' ..
    (count + n_new) .. ',"version":' .. version .. '}'
end
local ttl = tonumber(ARGV[1])
redis.call('EXPIRE', KEYS[1], ttl)
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('EXPIRE', KEYS[2], ttl) end
redis.call('SET', KEYS[3], reply, 'EX', tonumber(ARGV[2]))
return reply
"""

# VMA: a session's version, etag and memory columns, read together (a worker caches the memory
# under that version and etag). A script rather than MULTI, so that one pipeline reads many
# sessions on Redis Cluster too, where MULTI must stay on one slot. Returns
# {version or nil, etag or nil, HMGET...}. KEYS: meta, ex. ARGV: the columns.
READ_MEMORY = """
local out = redis.call('HMGET', KEYS[2], unpack(ARGV))
local head = redis.call('HMGET', KEYS[1], 'version', 'etag')
table.insert(out, 1, head[2])
table.insert(out, 1, head[1])
return out
"""

# VMA: remove one exemplar (keeping the others' order), bump the version, slide the TTL.
# Returns the new version, 'gone' when the session has ended, 'missing' for an unknown id.
# KEYS: meta, ex. ARGV: exemplar id, ttl, packed pixel bytes per exemplar, etag (as in
# COMMIT_EXEMPLARS).
DELETE_EXEMPLAR = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local n = tonumber(redis.call('HGET', KEYS[2], 'n') or '0')
if n == 0 then return 'missing' end
local ids = cjson.decode(redis.call('HGET', KEYS[2], 'ids'))
local want, at = tonumber(ARGV[1]), nil
for i = 1, #ids do if ids[i] == want then at = i break end end
if not at then return 'missing' end
local labels = cjson.decode(redis.call('HGET', KEYS[2], 'labels'))
table.remove(ids, at)
table.remove(labels, at)
local pb, hb = tonumber(ARGV[3]), 4 * tonumber(redis.call('HGET', KEYS[2], 'dim'))
local pix, h = redis.call('HGET', KEYS[2], 'pix'), redis.call('HGET', KEYS[2], 'h')
pix = string.sub(pix, 1, (at - 1) * pb) .. string.sub(pix, at * pb + 1)
h = string.sub(h, 1, (at - 1) * hb) .. string.sub(h, at * hb + 1)
local function arr(t) if #t == 0 then return '[]' end return cjson.encode(t) end
redis.call('HSET', KEYS[2], 'ids', arr(ids), 'labels', arr(labels), 'pix', pix, 'h', h, 'n', n - 1)
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'etag', ARGV[4])
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl') or ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return version
"""

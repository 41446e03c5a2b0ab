-- Create one RQ job atomically, never overwriting (RQ's own enqueue merges into an existing hash
-- and pushes the id twice). Honors the cutover job key: a live holder is returned instead.
-- ARGV: id, queue, placement (queue|scheduled|deferred|failed|finished|canceled), score,
--       job_key ('' for none), then field/value pairs of the job hash.
-- Returns {outcome, id}: outcome is 'created', 'exists' or 'key' (id is the live holder's).
local id, queue, placement, score, jobkey = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local h = 'rq:job:' .. id
local live = {queued = true, scheduled = true, deferred = true, started = true, created = true,
              ready_to_enqueue = true, rate_limited = true}
if jobkey ~= '' then
  local holder = redis.call('GET', 'cutover:key:' .. jobkey)
  if holder and holder ~= id then
    local st = redis.call('HMGET', 'rq:job:' .. holder, 'status', 'cutover_held')
    if st[2] or (st[1] and live[st[1]]) then return {'key', holder} end
  end
end
if redis.call('EXISTS', h) == 1 then return {'exists', id} end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', h, unpack(fields))
-- A new job with this id: whatever records an earlier job of that id left of how it ended
-- (cutover's record, RQ's results and finished/failed registries) no longer speak for it.
redis.call('HDEL', 'cutover:ended', id)
redis.call('DEL', 'rq:results:' .. id)
redis.call('SADD', 'rq:queues', 'rq:queue:' .. queue)
for _, qkey in ipairs(redis.call('SMEMBERS', 'rq:queues')) do
  local q = string.sub(qkey, 10)
  redis.call('ZREM', 'rq:finished:' .. q, id)
  redis.call('ZREM', 'rq:failed:' .. q, id)
end
if placement == 'queue' then
  redis.call('RPUSH', 'rq:queue:' .. queue, id)
else
  redis.call('ZADD', 'rq:' .. placement .. ':' .. queue, score, id)
end
if jobkey ~= '' and (placement == 'queue' or placement == 'scheduled' or placement == 'deferred') then
  redis.call('SET', 'cutover:key:' .. jobkey, id)
end
return {'created', id}

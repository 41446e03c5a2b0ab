-- Record the outcome of a claimed job in one step, where RQ's own API reads it.
-- ARGV: id, wip member, placement (finished|failed|scheduled|queue), score (scheduled: the run
--       time, sub-second), now (epoch seconds), n, then n field/value pairs of the entry for
--       RQ's result stream (none for a retry, as RQ writes none), then field/value pairs of the
--       job hash.
-- As RQ's worker does (handle_job_success / handle_job_failure): a finished job and its result
-- stream expire after the job's result_ttl (default 500 s; -1 never; 0: within a second),
-- a failed one after its failure_ttl (default one year); the registry score is when that
-- happens (+inf for never). Unlike RQ, the stream of a failure with no failure_ttl expires with
-- the job instead of never.
-- Returns 1, or 0 when the job no longer exists.
local id, member, placement, score, now, n =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'origin', 'cutover_job_key', 'result_ttl', 'failure_ttl',
                     'cutover_moved')
local origin, jobkey, moved = f[1], f[2], f[5]
if not origin then return 0 end
redis.call('ZREM', 'rq:wip:' .. origin, member)
local stream = {}
for i = 7, 6 + 2 * n do stream[#stream + 1] = ARGV[i] end
local fields = {}
for i = 7 + 2 * n, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', h, unpack(fields))
redis.call('HDEL', h, 'cutover_worker', 'cutover_execution')
local ttl = nil
if placement == 'finished' then
  ttl = (f[3] and tonumber(f[3])) or 500
elseif placement == 'failed' then
  ttl = (f[4] and tonumber(f[4])) or 31536000
end
local results = 'rq:results:' .. id
local dependents, dependencies = h .. ':dependents', 'rq:job::' .. id .. ':dependencies'
if #stream > 0 and ttl ~= 0 then
  redis.call('XADD', results, 'MAXLEN', 10, '*', unpack(stream))
  if ttl and ttl > 0 then
    redis.call('EXPIRE', results, ttl)
  else
    redis.call('PERSIST', results)
  end
end
if placement == 'queue' then
  redis.call('RPUSH', 'rq:queue:' .. origin, id)
elseif ttl == nil then
  redis.call('ZADD', 'rq:' .. placement .. ':' .. origin, score, id)
elseif ttl == 0 then
  -- RQ keeps nothing of a job whose TTL is 0. It deletes it in the step that queues its
  -- dependents; here that is dependents.lua, called right after this script and reading this
  -- job's status and dependents set: so they go a second later instead of at once.
  redis.call('DEL', results)
  redis.call('EXPIRE', h, 1)
  redis.call('EXPIRE', dependents, 1)
  redis.call('EXPIRE', dependencies, 1)
else
  local expires = '+inf'
  if ttl > 0 then expires = math.floor(now) + ttl end
  redis.call('ZADD', 'rq:' .. placement .. ':' .. origin, expires, id)
  if ttl > 0 then
    redis.call('EXPIRE', h, ttl)
    redis.call('EXPIRE', dependents, ttl)
    redis.call('EXPIRE', dependencies, ttl)
  else
    redis.call('PERSIST', h)
  end
end
if jobkey and placement ~= 'scheduled' and placement ~= 'queue' then
  if redis.call('GET', 'cutover:key:' .. jobkey) == id then
    redis.call('DEL', 'cutover:key:' .. jobkey)
  end
end
-- A job cutover moved here leaves a record of how it ended that never expires (RQ deletes the
-- job itself after its result or failure TTL): verify reads it as "finished, since deleted".
if moved and (placement == 'finished' or placement == 'failed') then
  redis.call('HSET', 'cutover:ended', id,
             (placement == 'finished' and 'succeeded' or 'failed') .. ' ' .. math.floor(now))
end
return 1

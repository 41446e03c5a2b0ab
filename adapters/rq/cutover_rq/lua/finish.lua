-- Record the outcome of a claimed job in one step.
-- ARGV: id, wip member, placement (finished|failed|scheduled|queue), score, field/value pairs.
-- Returns 1, or 0 when the job no longer exists.
local id, member, placement, score = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'origin', 'cutover_job_key')
local origin, jobkey = f[1], f[2]
if not origin then return 0 end
redis.call('ZREM', 'rq:wip:' .. origin, member)
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', h, unpack(fields))
redis.call('HDEL', h, 'cutover_worker', 'cutover_execution')
if placement == 'queue' then
  redis.call('RPUSH', 'rq:queue:' .. origin, id)
else
  redis.call('ZADD', 'rq:' .. placement .. ':' .. origin, score, id)
end
if jobkey and placement ~= 'scheduled' and placement ~= 'queue' then
  if redis.call('GET', 'cutover:key:' .. jobkey) == id then
    redis.call('DEL', 'cutover:key:' .. jobkey)
  end
end
return 1

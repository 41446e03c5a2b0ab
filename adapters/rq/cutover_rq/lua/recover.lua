-- Put a job whose cutover worker died back at the front of its queue.
-- ARGV: id, wip member, dead worker name.  Returns 1 when it was recovered.
local id, member, worker = ARGV[1], ARGV[2], ARGV[3]
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'status', 'cutover_worker', 'origin')
if f[1] ~= 'started' or f[2] ~= worker or not f[3] then return 0 end
redis.call('ZREM', 'rq:wip:' .. f[3], member)
redis.call('HSET', h, 'status', 'queued')
redis.call('HDEL', h, 'cutover_worker', 'cutover_execution', 'worker_name', 'started_at')
redis.call('LPUSH', 'rq:queue:' .. f[3], id)
return 1

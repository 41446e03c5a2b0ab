-- Take over a job whose cutover worker died, so that one recovering worker (not two) records
-- the attempt it was on as failed (finish.lua, right after: retried or failed for good).
-- ARGV: id, wip member, dead worker name, the recoverer's token (its new cutover_worker: a
--       recoverer that dies before finishing leaves it stalled again, its attempt not counted).
-- Returns 1 when it was taken over; 0 when its outcome was recorded meanwhile, or another
-- worker took it over.
local id, member, worker, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local h = 'rq:job:' .. id
local f = redis.call('HMGET', h, 'status', 'cutover_worker', 'origin')
if f[1] ~= 'started' or f[2] ~= worker or not f[3] then return 0 end
if not redis.call('ZSCORE', 'rq:wip:' .. f[3], member) then return 0 end
redis.call('HSET', h, 'cutover_worker', token)
return 1

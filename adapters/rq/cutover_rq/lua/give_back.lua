-- Return held jobs to where they were taken from. ARGV: owner, id...  Returns how many moved.
local owner = ARGV[1]
local moved = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local h = 'rq:job:' .. id
  local f = redis.call('HMGET', h, 'cutover_held', 'cutover_held_from', 'cutover_held_score',
                       'origin')
  if f[1] == owner then
    local from, score, origin = f[2], f[3], f[4]
    if from == 'queue' then
      redis.call('LPUSH', 'rq:queue:' .. origin, id)
    elseif from == 'scheduled' or from == 'deferred' then
      redis.call('ZADD', 'rq:' .. from .. ':' .. origin, score, id)
    end
    -- Back in the dependents sets take.lua took a deferred job out of (the caller then queues
    -- it if RQ finished its parents meanwhile: dependents.lua 'check').
    local parents = redis.call('HGET', h, 'cutover_held_parents')
    if parents then
      for _, p in ipairs(cjson.decode(parents)) do
        redis.call('SADD', 'rq:job:' .. p .. ':dependents', id)
        redis.call('SREM', 'cutover:held-dependents:' .. p, id)
      end
    end
    redis.call('HDEL', h, 'cutover_held', 'cutover_held_from', 'cutover_held_score',
               'cutover_held_parents')
    redis.call('ZREM', 'cutover:held:' .. origin, id)
    moved = moved + 1
  end
end
return moved

-- Take waiting jobs out of every place an RQ worker or scheduler could start them, and hold
-- them for an owner. Atomic per call: a job is either still runnable or held, never neither.
-- ARGV: owner, now, id...   Returns a flat list: id, outcome ('taken' or the refusal reason).
local owner, now = ARGV[1], ARGV[2]
local out = {}
-- RQ's worker releases a deferred job from its parents' dependents sets when a parent finishes
-- (Queue.enqueue_dependents / move_dependents_to_ready: it would queue and run a held job), so a
-- held deferred job is out of those sets; 'cutover:held-dependents:<parent>' names it instead
-- (the waiter check below reads both), and the hash the parents to restore (give_back.lua).
local function detach(id, h)
  local parents = {}
  for _, p in ipairs(redis.call('SMEMBERS', 'rq:job::' .. id .. ':dependencies')) do
    if redis.call('SREM', 'rq:job:' .. p .. ':dependents', id) == 1 then
      redis.call('SADD', 'cutover:held-dependents:' .. p, id)
      parents[#parents + 1] = p
    end
  end
  if #parents > 0 then redis.call('HSET', h, 'cutover_held_parents', cjson.encode(parents)) end
end

for i = 3, #ARGV do
  local id = ARGV[i]
  local h = 'rq:job:' .. id
  local f = redis.call('HMGET', h, 'status', 'origin', 'cutover_held')
  local status, origin, held = f[1], f[2], f[3]
  local res, from, score = nil, nil, '0'
  local waiter = nil
  if status and not held then
    -- A job that deferred jobs wait on stays where RQ releases them when it succeeds (checked
    -- here too, atomically, for dependents enqueued after the drain classified it).
    for _, key in ipairs({h .. ':dependents', 'cutover:held-dependents:' .. id}) do
      for _, c in ipairs(redis.call('SMEMBERS', key)) do
        if redis.call('HGET', 'rq:job:' .. c, 'status') == 'deferred' then waiter = c; break end
      end
      if waiter then break end
    end
  end
  if not status or not origin then
    res = 'missing'
  elseif waiter then
    res = 'deferred job ' .. waiter .. ' waits on it'
  elseif held then
    if held == owner then
      -- Held by an older version (killed mid-drain) that left it in its parents' sets.
      if redis.call('HGET', h, 'cutover_held_from') == 'deferred' then detach(id, h) end
      res = 'taken'
    else
      res = 'held by ' .. held
    end
  elseif status == 'queued' then
    -- Count 1: the search stops at the first match, so taking from the head of a long list is
    -- cheap (a drain reads lists head first).
    if redis.call('LREM', 'rq:queue:' .. origin, 1, id) > 0 then
      from = 'queue'
    elseif redis.call('LPOS', 'rq:queue:' .. origin .. ':intermediate', id) then
      res = 'started'
    else
      from = 'orphan'
    end
  elseif status == 'scheduled' or status == 'deferred' then
    local zkey = 'rq:' .. status .. ':' .. origin
    local s = redis.call('ZSCORE', zkey, id)
    if s then
      redis.call('ZREM', zkey, id)
      from, score = status, s
    else
      from = 'orphan'
    end
  else
    res = status
  end
  if from then
    redis.call('HSET', h, 'cutover_held', owner, 'cutover_held_from', from,
               'cutover_held_score', score)
    if from == 'deferred' then detach(id, h) end
    redis.call('ZADD', 'cutover:held:' .. origin, now, id)
    res = 'taken'
  end
  out[#out + 1] = id
  out[#out + 1] = res
end
return out

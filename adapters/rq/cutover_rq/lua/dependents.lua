-- Queue deferred dependents whose dependencies are met, as RQ's own worker does
-- (Queue.enqueue_dependents in rq 2.x, move_dependents_to_ready + enqueue in 3.x), in one step.
-- A separate step from finish.lua: called right after it (a crash in between leaves the
-- dependents deferred; the cutover worker's sweep and the drain's resolution release them).
--
-- ARGV[1] mode:
--   'parent' ARGV[2]=parent id: the dependents in rq:job:<parent>:dependents (that job has ended)
--   'check'  ARGV[2..]=job ids: these deferred jobs, if their dependencies are met (a sweep)
--   'force'  ARGV[2..]=job ids: these deferred jobs, no check (the drain checked both sides)
-- ARGV[last] enqueued_at (RQ's timestamp format).
-- Met, as RQ says: every parent `finished`, or `failed` when the dependent allows dependency
-- failures; `canceled`/`stopped` never. A parent whose hash is gone counts as met (RQ's rule: it
-- finished and its result expired, which expires its dependents set with it) unless its
-- dependents set still names the dependent: then cutover moved it to another backend (remove.lua
-- keeps that set) and only the drain, which reads that backend, can tell its outcome.
-- Queued: out of rq:deferred:<origin>, status queued, LPUSH when enqueue_at_front else RPUSH.
-- A dependent held by a drain is marked to go back to its queue instead. Returns the ids queued.
local mode = ARGV[1]
local enqueued_at = ARGV[#ARGV]
local candidates = {}
local parent = nil
if mode == 'parent' then
  parent = ARGV[2]
  candidates = redis.call('SMEMBERS', 'rq:job:' .. parent .. ':dependents')
else
  for i = 2, #ARGV - 1 do candidates[#candidates + 1] = ARGV[i] end
end

local function parents_of(child, h)
  local ids = redis.call('SMEMBERS', 'rq:job::' .. child .. ':dependencies')
  if #ids == 0 then
    -- Older jobs: only the hash says (dependency_ids is JSON, dependency_id one id).
    local f = redis.call('HMGET', h, 'dependency_ids', 'dependency_id')
    if f[1] then
      local ok, decoded = pcall(cjson.decode, f[1])
      if ok and type(decoded) == 'table' then ids = decoded end
    elseif f[2] then
      ids = {f[2]}
    end
  end
  return ids
end

local function met(child, h, allow)
  for _, p in ipairs(parents_of(child, h)) do
    local status = redis.call('HGET', 'rq:job:' .. p, 'status')
    if status then
      if not (status == 'finished' or (status == 'failed' and allow == '1')) then
        return false
      end
    elseif redis.call('SISMEMBER', 'rq:job:' .. p .. ':dependents', child) == 1 then
      return false
    end
  end
  return true
end

local released = {}
for _, child in ipairs(candidates) do
  local h = 'rq:job:' .. child
  local f = redis.call('HMGET', h, 'status', 'origin', 'allow_dependency_failures',
                       'enqueue_at_front', 'cutover_held', 'cutover_held_from')
  local status, origin, allow, front, held, held_from = f[1], f[2], f[3], f[4], f[5], f[6]
  if not status then
    if parent then redis.call('SREM', 'rq:job:' .. parent .. ':dependents', child) end
  elseif status == 'deferred' and origin and (mode == 'force' or met(child, h, allow)) then
    redis.call('ZREM', 'rq:deferred:' .. origin, child)
    redis.call('HSET', h, 'status', 'queued', 'enqueued_at', enqueued_at)
    if held then
      if held_from == 'deferred' then redis.call('HSET', h, 'cutover_held_from', 'queue') end
    elseif front == '1' then
      redis.call('LPUSH', 'rq:queue:' .. origin, child)
    else
      redis.call('RPUSH', 'rq:queue:' .. origin, child)
    end
    redis.call('SADD', 'rq:queues', 'rq:queue:' .. origin)
    -- No parent needs to release it any more (RQ removes it from the set of the parent that
    -- released it; the sets of parents cutover moved away are dropped here too).
    for _, p in ipairs(parents_of(child, h)) do
      redis.call('SREM', 'rq:job:' .. p .. ':dependents', child)
    end
    released[#released + 1] = child
  end
end
return released

-- Delete jobs from every place RQ or cutover keeps them. ARGV: id...  Returns how many existed.
local removed = 0
for i = 1, #ARGV do
  local id = ARGV[i]
  local h = 'rq:job:' .. id
  local f = redis.call('HMGET', h, 'origin', 'cutover_job_key', 'status', 'cutover_held')
  local origin, jobkey, status, held = f[1], f[2], f[3], f[4]
  if redis.call('EXISTS', h) == 1 then removed = removed + 1 end
  if origin then
    -- A held job is in no list (take removed it): skip the O(length) list scans, which would
    -- make releasing a drained batch quadratic.
    if not held then
      redis.call('LREM', 'rq:queue:' .. origin, 0, id)
      redis.call('LREM', 'rq:queue:' .. origin .. ':intermediate', 0, id)
    end
    for _, reg in ipairs({'scheduled', 'deferred', 'failed', 'finished', 'canceled', 'ready'}) do
      redis.call('ZREM', 'rq:' .. reg .. ':' .. origin, id)
    end
    if status == 'started' and not held then
      for _, m in ipairs(redis.call('ZRANGE', 'rq:wip:' .. origin, 0, -1)) do
        if m == id or string.sub(m, 1, #id + 1) == id .. ':' then
          redis.call('ZREM', 'rq:wip:' .. origin, m)
        end
      end
    end
    redis.call('ZREM', 'cutover:held:' .. origin, id)
  end
  if jobkey and redis.call('GET', 'cutover:key:' .. jobkey) == id then
    redis.call('DEL', 'cutover:key:' .. jobkey)
  end
  redis.call('DEL', h, h .. ':dependents', 'rq:job::' .. id .. ':dependencies',
             'rq:results:' .. id, 'rq:executions:' .. id)
end
return removed

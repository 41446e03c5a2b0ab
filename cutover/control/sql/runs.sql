-- Drain runs, their switch and pair lock, and failure records.
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: failure_add
INSERT INTO {schema}.failures (run_id, cutover_id, backend, class, reason)
SELECT %(run_id)s, * FROM unnest(%(id)s::text[], %(backend)s::text[], %(class)s::text[],
                                 %(reason)s::text[]);

-- name: failures_summary
SELECT class, count(*) FROM {schema}.failures GROUP BY 1 ORDER BY 1;

-- name: run_start
INSERT INTO {schema}.runs (run_id, kind, source, target, options, source_url, target_url)
VALUES (%(run_id)s, %(kind)s, %(source)s, %(target)s, %(options)s,
        (SELECT url FROM {schema}.stores WHERE key = %(source)s),
        (SELECT url FROM {schema}.stores WHERE key = %(target)s));

-- name: run_finish
UPDATE {schema}.runs SET state = %(state)s, moved = %(moved)s, left_behind = %(left)s,
                         finished_at = now()
WHERE run_id = %(run_id)s;

-- name: run_get
SELECT kind, source, target, state FROM {schema}.runs WHERE run_id = %(run_id)s;

-- name: run_switch
SELECT switch FROM {schema}.runs WHERE run_id = %(run_id)s;

-- name: set_switch
UPDATE {schema}.runs SET switch = %(switch)s
WHERE source = %(source)s AND target = %(target)s AND state = 'running'
RETURNING run_id;

-- name: pair_lock
SELECT pg_try_advisory_lock(hashtext('cutover.drain:' || %(source)s || '->' || %(target)s));

-- name: pair_unlock
SELECT pg_advisory_unlock(hashtext('cutover.drain:' || %(source)s || '->' || %(target)s));

-- name: abandon_runs
UPDATE {schema}.runs SET state = 'interrupted', finished_at = now()
WHERE source = %(source)s AND target = %(target)s AND state = 'running'
RETURNING run_id;

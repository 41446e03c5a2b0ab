-- The ledger: one row per job the toolkit moved or accepted.
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: ledger_stage
CREATE TEMPORARY TABLE IF NOT EXISTS cutover_ledger_in (
    cutover_id text, task text, queue text, digest text, content text, state text,
    source text, target text, source_id text, origin text, run_id text
);
TRUNCATE cutover_ledger_in;

-- name: ledger_copy_direct
-- New rows (the usual case) go straight into the ledger; a batch that meets rows already there
-- (a job moved back, a re-run) goes through cutover_ledger_in and the upsert below.
COPY {schema}.ledger (cutover_id, task, queue, digest, content, state, source, target, source_id,
                      origin, run_id) FROM STDIN;

-- name: ledger_copy
COPY cutover_ledger_in (cutover_id, task, queue, digest, content, state, source, target,
                        source_id, origin, run_id) FROM STDIN;

-- name: ledger_upsert
INSERT INTO {schema}.ledger AS l (cutover_id, task, queue, digest, content, state, source,
                                  target, source_id, origin, run_id)
SELECT cutover_id, task, queue, digest, content, state, source, target, source_id, origin,
       run_id
FROM cutover_ledger_in
ON CONFLICT (cutover_id) DO UPDATE
    SET task = EXCLUDED.task, queue = EXCLUDED.queue, digest = EXCLUDED.digest,
        content = EXCLUDED.content, state = EXCLUDED.state, source = EXCLUDED.source,
        target = EXCLUDED.target, source_id = EXCLUDED.source_id, run_id = EXCLUDED.run_id,
        updated_at = now();

-- name: ledger_upsert_with
-- One row: one statement and one round trip (the COPY path costs a savepoint, the COPY and its
-- release, and a temporary table when a row exists already); the same upsert as ledger_upsert.
-- Its parameters are named apart (ledger_*) so that a backend can run it in the same SQL
-- statement as the job it belongs to (ProcrastinateBackend.enqueue_with: a data-modifying WITH;
-- one round trip and one commit for a Router's single dual write); Ledger.record runs it alone.
INSERT INTO {schema}.ledger AS l (cutover_id, task, queue, digest, content, state, source,
                                  target, source_id, origin, run_id)
VALUES (%(ledger_id)s, %(ledger_task)s, %(ledger_queue)s, %(ledger_digest)s,
        %(ledger_content)s, %(ledger_state)s, %(ledger_source)s, %(ledger_target)s,
        %(ledger_source_id)s, %(ledger_origin)s, %(ledger_run_id)s)
ON CONFLICT (cutover_id) DO UPDATE
    SET task = EXCLUDED.task, queue = EXCLUDED.queue, digest = EXCLUDED.digest,
        content = EXCLUDED.content, state = EXCLUDED.state, source = EXCLUDED.source,
        target = EXCLUDED.target, source_id = EXCLUDED.source_id, run_id = EXCLUDED.run_id,
        updated_at = now();

-- name: ledger_mark
SELECT {schema}.ledger_mark(%(ids)s, %(state)s, %(source)s, %(target)s);

-- name: ledger_forget
-- Intent rows of jobs the target refused (given back to the source): they never moved.
DELETE FROM {schema}.ledger
WHERE cutover_id = ANY(%(ids)s::text[]) AND source = %(source)s AND target = %(target)s
  AND state = 'moving';

-- name: ledger_states
SELECT l.cutover_id, l.state, l.source, l.target
FROM unnest(string_to_array(%(ids)s, E'\n')) AS u(id)
JOIN {schema}.ledger l ON l.cutover_id = u.id;

-- name: ledger_unfinished
SELECT cutover_id, state, digest FROM {schema}.ledger
WHERE source = %(source)s AND target = %(target)s AND state IN ('moving', 'moved')
ORDER BY cutover_id;

-- name: ledger_pair_history
-- Whether the ledger holds any job moved from source to target (stops at the first row), and,
-- only when it holds none, how many were moved the other way (verify refuses a pair with no
-- history, and hints at the reverse one). The count is a subplan in a CASE branch: not run
-- for a pair with history, so a normal verify pays no extra scan of the ledger.
WITH f AS MATERIALIZED (SELECT EXISTS (SELECT 1 FROM {schema}.ledger
                                       WHERE source = %(source)s AND target = %(target)s) AS moved)
SELECT f.moved,
       CASE WHEN f.moved THEN 0
            ELSE (SELECT count(*) FROM {schema}.ledger
                  WHERE source = %(target)s AND target = %(source)s) END
FROM f;

-- name: ledger_summary
SELECT COALESCE(s.url, l.source), COALESCE(t.url, l.target), l.state, l.n
FROM (SELECT source, target, state, count(*) AS n FROM {schema}.ledger GROUP BY 1, 2, 3) l
LEFT JOIN {schema}.stores s ON s.key = l.source
LEFT JOIN {schema}.stores t ON t.key = l.target
ORDER BY 1, 2, 3;

-- name: ledger_content
-- One job's content as the ledger recorded it (a shadow dry run compares its copy with it).
SELECT digest, content FROM {schema}.ledger WHERE cutover_id = %(id)s;

-- name: ledger_discard
-- Rows of jobs the Router wrote on the target whose source write then failed (or whose job
-- key was held on the source): the target copy is removed with its row.
DELETE FROM {schema}.ledger
WHERE cutover_id = ANY(%(ids)s::text[]) AND source = %(source)s AND target = %(target)s
  AND state = 'accepted';

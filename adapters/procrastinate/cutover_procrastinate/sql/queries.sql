-- name: schema_present
-- Read pg_class through an MVCC snapshot (to_regclass may use a stale catalog snapshot right
-- after the advisory lock was granted, and see no table that another session just committed).
-- The adapter's part counts as present only when its newest table (cutover_departed) and the
-- trigger that fills it are there: a database set up by an older version, or whose
-- procrastinate_jobs was recreated by a migration, gets them back (the DDL is idempotent).
SELECT COALESCE(bool_or(c.relname = 'procrastinate_jobs'), false) AS present,
       COALESCE(bool_or(c.relname = 'cutover_departed'), false)
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                   JOIN pg_catalog.pg_class r ON r.oid = t.tgrelid
                   JOIN pg_catalog.pg_namespace rn ON rn.oid = r.relnamespace
                   WHERE t.tgname = 'cutover_departure_v2' AND r.relname = 'procrastinate_jobs'
                     AND rn.nspname = current_schema())
       -- and cutover_jobs with its newest column (an older table gets the columns it lacks)
       AND COALESCE(bool_or(c.relname = 'cutover_jobs' AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_attribute a
           WHERE a.attrelid = c.oid AND a.attname = 'native' AND NOT a.attisdropped)), false)
       -- and its functions (cutover_enqueue_v1, cutover_claim_candidate_v1)
       AND (SELECT count(DISTINCT p.proname) FROM pg_catalog.pg_proc p
            WHERE p.proname IN ('cutover_enqueue_v1', 'cutover_claim_candidate_v1')
              AND p.pronamespace = (SELECT oid FROM pg_catalog.pg_namespace
                                    WHERE nspname = current_schema())) = 2
           AS adapter_present
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema()
  AND c.relname IN ('procrastinate_jobs', 'cutover_departed', 'cutover_jobs');

-- name: schema_lock
SELECT pg_advisory_xact_lock(hashtext('cutover_procrastinate.schema'));

-- name: schema_features
SELECT
    to_regprocedure('procrastinate_retry_job_v2(bigint, timestamp with time zone, integer, character varying, character varying)') IS NOT NULL AS retry_v2,
    to_regclass('procrastinate_workers') IS NOT NULL AS workers,
    to_regprocedure('procrastinate_defer_jobs_v1(procrastinate_job_to_defer_v1[])') IS NOT NULL AS defer_jobs_v1;

-- name: key_lock
SELECT pg_advisory_xact_lock(hashtext('cutover-key:' || k)) FROM unnest(%(keys)s::text[]) AS k ORDER BY k;

-- name: live_key_holders
-- Two halves so that neither reads every waiting job: procrastinate's unique index on
-- queueing_lock covers todo jobs; doing jobs are few (its index on lock covers them).
SELECT j.queueing_lock, COALESCE(c.cutover_id, 'pg-' || j.id)
FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
WHERE j.queueing_lock = ANY(%(keys)s::text[]) AND j.status = 'todo'
UNION ALL
SELECT j.queueing_lock, COALESCE(c.cutover_id, 'pg-' || j.id)
FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
WHERE j.queueing_lock = ANY(%(keys)s::text[]) AND j.status = 'doing';

-- name: existing_ids
-- Ids travel as one newline-separated text: a text[] parameter is escaped element by element.
SELECT c.cutover_id
FROM unnest(string_to_array(%(ids)s, E'\n')) AS u(id)
JOIN cutover_jobs c ON c.cutover_id = u.id
UNION
SELECT 'pg-' || j.id FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
WHERE c.job_id IS NULL AND j.id = ANY(%(native)s::bigint[]);

-- name: resolve_ids
-- Cutover id -> row id, without reading the jobs (take and remove need only the mapping).
SELECT c.cutover_id, c.job_id
FROM unnest(string_to_array(%(ids)s, E'\n')) AS u(id)
JOIN cutover_jobs c ON c.cutover_id = u.id
UNION ALL
SELECT 'pg-' || j.id, j.id FROM procrastinate_jobs j
WHERE j.id = ANY(%(native)s::bigint[])
  AND NOT EXISTS (SELECT 1 FROM cutover_jobs x WHERE x.job_id = j.id);

-- name: next_ids
SELECT nextval(pg_get_serial_sequence('procrastinate_jobs', 'id')) FROM generate_series(1, %(n)s);

-- name: copy_jobs
COPY procrastinate_jobs (id, queue_name, task_name, priority, queueing_lock, args, scheduled_at,
                         attempts, status) FROM STDIN;

-- name: copy_meta
COPY cutover_jobs (job_id, cutover_id, max_attempts, retry_intervals, positional, origin,
                   created_at, error, result, native) FROM STDIN;

-- name: select_jobs
SELECT j.id, j.queue_name, j.task_name, j.priority, j.queueing_lock, j.args, j.status::text,
       j.scheduled_at, j.attempts, c.cutover_id, c.max_attempts, c.retry_intervals, c.positional,
       c.origin, c.created_at, c.updated_at, c.held_by, c.held_scheduled_at, c.error, c.result,
       j.lock, c.native
FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id

-- name: counts
SELECT j.queue_name,
       CASE
           WHEN c.held_by IS NOT NULL THEN 'held'
           WHEN j.status = 'todo' AND j.scheduled_at > now() THEN 'scheduled'
           WHEN j.status = 'todo' THEN 'queued'
           WHEN j.status IN ('doing', 'aborting') THEN 'started'
           WHEN j.status = 'succeeded' THEN 'finished'
           WHEN j.status = 'failed' THEN 'failed'
           ELSE 'canceled'
       END AS state,
       count(*)
FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
WHERE %(queues)s::text[] IS NULL OR j.queue_name = ANY(%(queues)s::text[])
GROUP BY 1, 2;

-- name: lock_for_take
SELECT j.id, j.status::text, c.held_by FROM procrastinate_jobs j
LEFT JOIN cutover_jobs c ON c.job_id = j.id
WHERE j.id = ANY(%(ids)s::bigint[])
FOR UPDATE OF j;

-- name: hold
WITH held AS (
    INSERT INTO cutover_jobs (job_id, cutover_id, held_by, held_scheduled_at)
    SELECT j.id, 'pg-' || j.id, %(owner)s, j.scheduled_at
    FROM procrastinate_jobs j WHERE j.id = ANY(%(ids)s::bigint[])
    ON CONFLICT (job_id) DO UPDATE
        SET held_by = EXCLUDED.held_by, held_scheduled_at = EXCLUDED.held_scheduled_at,
            updated_at = now()
    RETURNING job_id
)
UPDATE procrastinate_jobs SET scheduled_at = '9999-12-31T00:00:00+00'
WHERE id IN (SELECT job_id FROM held);

-- name: give_back
WITH released AS (
    UPDATE cutover_jobs SET held_by = NULL, updated_at = now()
    WHERE held_by = %(owner)s AND job_id = ANY(%(ids)s::bigint[])
    RETURNING job_id, held_scheduled_at
)
UPDATE procrastinate_jobs j SET scheduled_at = r.held_scheduled_at
FROM released r WHERE j.id = r.job_id AND j.status = 'todo'
RETURNING j.id;

-- name: delete_jobs
DELETE FROM procrastinate_jobs WHERE id = ANY(%(ids)s::bigint[]);

-- name: moving_away
-- For the rest of the transaction, deletions are moves (no departure row; see schema.sql).
SELECT set_config('cutover.moving_away', 'on', true);

-- name: clear_departures
-- A job put again starts a new stay: what became of an earlier one no longer speaks for it.
DELETE FROM cutover_departed
WHERE cutover_id = ANY(string_to_array(%(ids)s, E'\n'));

-- name: departures
SELECT d.cutover_id, d.status, d.finished, d.how, d.deleted_at
FROM unnest(string_to_array(%(ids)s, E'\n')) AS u(id)
JOIN cutover_departed d ON d.cutover_id = u.id;

-- name: claim_one
-- Start the next runnable job and read it whole, in one statement (one candidate, one row;
-- procrastinate's own fetch is one call too). The candidate comes from
-- cutover_claim_candidate_v1 (sql/schema.sql), whose plan does not depend on statistics. The
-- row as it was is returned (status todo).
WITH candidate AS (
    SELECT cutover_claim_candidate_v1(%(queues)s::text[], %(skip)s::bigint[]) AS id
), started AS (
    UPDATE procrastinate_jobs s SET status = 'doing', worker_id = %(worker_id)s
    FROM candidate WHERE s.id = candidate.id
    RETURNING s.id
)
SELECT j.id, j.queue_name, j.task_name, j.priority, j.queueing_lock, j.args, j.status::text,
       j.scheduled_at, j.attempts, c.cutover_id, c.max_attempts, c.retry_intervals, c.positional,
       c.origin, c.created_at, c.updated_at, c.held_by, c.held_scheduled_at, c.error, c.result,
       j.lock, c.native
FROM started JOIN procrastinate_jobs j ON j.id = started.id
LEFT JOIN cutover_jobs c ON c.job_id = j.id;

-- name: unclaim
-- A job the worker refuses (unknown task, undecodable args) goes back to waiting as it was
-- (procrastinate's events show it started and went back: 'started', 'deferred_for_retry').
UPDATE procrastinate_jobs SET status = 'todo', worker_id = NULL
WHERE id = %(id)s AND status = 'doing' AND worker_id = %(worker_id)s;

-- name: start_job
UPDATE procrastinate_jobs SET status = 'doing', worker_id = %(worker_id)s
WHERE id = %(id)s AND status = 'todo';

-- name: finish_job
SELECT procrastinate_finish_job_v1(%(id)s, %(status)s::procrastinate_job_status, false);

-- name: retry_job
SELECT procrastinate_retry_job_v2(%(id)s, %(retry_at)s, NULL, NULL, NULL);

-- name: clear_outcome
-- A success without a result: only a job with a row has anything to clear (a plain
-- procrastinate job gets no row, as procrastinate keeps nothing).
UPDATE cutover_jobs SET error = NULL, result = NULL, updated_at = now()
WHERE job_id = %(id)s;

-- name: upsert_outcome
INSERT INTO cutover_jobs (job_id, cutover_id, error, result, updated_at)
VALUES (%(id)s, 'pg-' || %(id)s, %(error)s, %(result)s, now())
ON CONFLICT (job_id) DO UPDATE
    SET error = EXCLUDED.error, result = EXCLUDED.result, updated_at = now();

-- name: register_worker
SELECT worker_id FROM procrastinate_register_worker_v1();

-- name: heartbeat
SELECT procrastinate_update_heartbeat_v1(%(worker_id)s);

-- name: recover_stalled
-- Jobs whose worker died, locked until the transaction records their attempt as failed
-- (finish_job / retry_job, as the worker's fail does); SKIP LOCKED: two recovering workers
-- never count one attempt twice, and a job whose outcome was recorded is no longer 'doing'.
SELECT j.id FROM procrastinate_jobs j
WHERE j.status = 'doing'
  AND (j.worker_id IS NULL
       OR NOT EXISTS (SELECT 1 FROM procrastinate_workers w WHERE w.id = j.worker_id)
       OR EXISTS (SELECT 1 FROM procrastinate_workers w WHERE w.id = j.worker_id
                  AND w.last_heartbeat < now() - make_interval(secs => %(seconds)s)))
ORDER BY j.id
FOR UPDATE OF j SKIP LOCKED;

-- name: native_workers
-- Workers alive by procrastinate's own measure (heartbeat within its stalled timeout).
SELECT id, last_heartbeat FROM procrastinate_workers
WHERE last_heartbeat >= now() - make_interval(secs => %(seconds)s)
ORDER BY id;

-- name: unregister_worker
SELECT procrastinate_unregister_worker_v1(%(worker_id)s);

-- name: pause
INSERT INTO cutover_paused (queue) SELECT unnest(%(queues)s::text[]) ON CONFLICT DO NOTHING;

-- name: resume_all
DELETE FROM cutover_paused;

-- name: resume
DELETE FROM cutover_paused WHERE queue = ANY(%(queues)s::text[]);

-- name: paused
SELECT queue FROM cutover_paused;

-- name: native_job
-- make_app's wrapper, before running a job: what procrastinate_jobs cannot hold (positional
-- args, the job's own retry budget). No row: a job deferred by plain procrastinate code.
SELECT positional, max_attempts, retry_intervals, error IS NOT NULL OR result IS NOT NULL AS
       has_outcome
FROM cutover_jobs WHERE job_id = %(job_id)s;

-- name: native_outcome
-- make_app's wrapper, after running a job: the error or result, kept as the cutover worker keeps
-- them (upsert_outcome): a plain job gets a row only when there is something to keep.
INSERT INTO cutover_jobs (job_id, cutover_id, error, result, updated_at)
VALUES (%(job_id)s, 'pg-' || %(job_id)s, %(error)s, %(result)s::jsonb, now())
ON CONFLICT (job_id) DO UPDATE
    SET error = EXCLUDED.error, result = EXCLUDED.result, updated_at = now();

-- name: store_system
-- Which store this is, whatever the URL's spelling: the cluster (system_identifier, the same on
-- its physical replicas, kept across restarts), the database, and the schema procrastinate's
-- jobs live in. pg_control_system() is executable by PUBLIC unless an administrator revoked it
-- (then store_marker below is used).
SELECT system_identifier::text FROM pg_control_system();

-- name: store_place
SELECT current_database(), COALESCE((SELECT n.nspname FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE c.oid = to_regclass('procrastinate_jobs')), current_schema());

-- name: store_marker
-- Fallback when pg_control_system() is not allowed: a marker written once per database (keyed
-- by the database's oid, so a copy made with CREATE DATABASE ... TEMPLATE gets its own).
CREATE TABLE IF NOT EXISTS cutover_store_marker (
    datoid oid PRIMARY KEY,
    marker text NOT NULL DEFAULT md5(random()::text || clock_timestamp()::text)
);
INSERT INTO cutover_store_marker (datoid)
SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()
ON CONFLICT DO NOTHING;

-- name: store_marker_read
SELECT m.marker FROM cutover_store_marker m JOIN pg_catalog.pg_database d ON d.oid = m.datoid
WHERE d.datname = current_database();

-- name: enqueue_one
SELECT cutover_enqueue_v1(%(id)s, %(queue)s, %(task)s, %(priority)s, %(key)s, %(args)s::jsonb,
                          %(run_at)s, %(attempts)s, %(max_attempts)s, %(intervals)s::jsonb,
                          %(positional)s::jsonb, %(origin)s, %(created_at)s, %(native)s::jsonb);

-- name: enqueue_with
-- enqueue_one and a statement of the caller's (the Router's ledger row) in one statement:
-- one round trip and one commit, as defer's. A data-modifying WITH runs exactly once whether
-- or not the outer query reads it; the function's own rules (existing id, live job key) decide
-- the id returned, and the caller deals with a row written for an id it did not get.
WITH job AS MATERIALIZED (
    SELECT cutover_enqueue_v1(%(id)s, %(queue)s, %(task)s, %(priority)s, %(key)s,
                              %(args)s::jsonb, %(run_at)s, %(attempts)s, %(max_attempts)s,
                              %(intervals)s::jsonb, %(positional)s::jsonb, %(origin)s,
                              %(created_at)s, %(native)s::jsonb) AS id
), companion AS (
    {companion}
)
SELECT id FROM job;

-- name: native_clashes
-- Of ids pg-N coming from another backend, those that would be confused with procrastinate's
-- own job N: a plain job N here now (a job cutover moved away is held, with a cutover_jobs
-- row, or deleted), or an N the id sequence has not reached (a job deferred later would get it).
SELECT n FROM unnest(%(native)s::bigint[]) AS u(n)
WHERE n > coalesce(pg_sequence_last_value(
          pg_get_serial_sequence('procrastinate_jobs', 'id')::regclass), 0)
   OR EXISTS (SELECT 1 FROM procrastinate_jobs p WHERE p.id = n
              AND NOT EXISTS (SELECT 1 FROM cutover_jobs c WHERE c.job_id = p.id));

-- name: where_by_ids
-- Jobs by cutover id: a row of cutover_jobs, or pg-N for a plain job (native). An IN over a
-- UNION so that both halves use an index; an OR would scan the table. Ids travel as one text,
-- a line each.
j.id IN (SELECT c.job_id FROM unnest(string_to_array(%(ids)s, E'\n')) AS u(id)
         JOIN cutover_jobs c ON c.cutover_id = u.id
         UNION ALL
         SELECT p.id FROM procrastinate_jobs p
          WHERE p.id = ANY(%(native)s::bigint[])
            AND NOT EXISTS (SELECT 1 FROM cutover_jobs x WHERE x.job_id = p.id))

-- name: where_snapshot
-- A snapshot's or a batch reader's filter: queues, statuses, and a partition chosen by a hash
-- of the cutover id (each reader gets only its share off the server); NULL means any.
(%(queues)s::text[] IS NULL OR j.queue_name = ANY(%(queues)s::text[]))
AND (%(statuses)s::text[] IS NULL OR j.status::text = ANY(%(statuses)s::text[]))
AND (%(shares)s::int IS NULL
     OR mod(abs(hashtext(COALESCE(c.cutover_id, 'pg-' || j.id))::bigint), %(shares)s) = %(share)s)

-- name: custom_plans
-- Every statement planned for its own values (see _configure in backend.py: a generic plan made
-- while the tables were empty would scan them).
SET plan_cache_mode = force_custom_plan

-- name: cutover_marker_table
-- The cut-over marker (cutover/marker.py): this store is in a staged cut-over. One row,
-- overwritten by every phase command; the table is created by the first write (a store never
-- in a cut-over has none, and reading it then finds nothing). The lock: two first writes at
-- once (a phase command and a worker) would race on CREATE TABLE IF NOT EXISTS's catalog row.
SELECT pg_advisory_xact_lock(hashtext('cutover_cutover_marker'));
CREATE TABLE IF NOT EXISTS cutover_cutover_marker (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    marker text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);

-- name: cutover_marker_write
INSERT INTO cutover_cutover_marker (marker) VALUES (%(marker)s)
ON CONFLICT (one) DO UPDATE SET marker = EXCLUDED.marker, written_at = now();

-- name: cutover_marker_read
SELECT marker FROM cutover_cutover_marker;

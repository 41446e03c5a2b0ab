-- The adapter's own table, beside procrastinate's, in the same schema (search_path). It keeps
-- what procrastinate_jobs has no column for, so nothing about a job is lost on the way in:
-- its cutover id, its own retry budget and backoff, positional args, the error and the result.
CREATE TABLE IF NOT EXISTS cutover_jobs (
    job_id bigint PRIMARY KEY REFERENCES procrastinate_jobs (id) ON DELETE CASCADE,
    cutover_id text NOT NULL UNIQUE,
    max_attempts integer NOT NULL DEFAULT 1,
    retry_intervals jsonb NOT NULL DEFAULT '[]',
    positional jsonb,
    origin text NOT NULL DEFAULT 'procrastinate',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    held_by text,
    held_scheduled_at timestamptz,
    error text,
    result jsonb
);
-- Columns added since the table's first release (additive: an existing table gains them).
-- native: how the job's origin backend stored it (RQ's serializer, description, timeout, TTLs,
-- meta, which args were positional), carried so that a move back writes the job the same way;
-- also the job's own time limit ("timeout", RQ's job timeout), so the cutover worker keeps it.
ALTER TABLE cutover_jobs ADD COLUMN IF NOT EXISTS native jsonb;
CREATE INDEX IF NOT EXISTS cutover_jobs_held_by_idx ON cutover_jobs (held_by)
    WHERE held_by IS NOT NULL;
CREATE TABLE IF NOT EXISTS cutover_paused (queue text PRIMARY KEY);
-- Departures: what became of a job cutover put here once its row is deleted, so that verify can
-- tell a job procrastinate's retention removed after it finished (`procrastinate ...
-- remove_old_jobs`, JobManager.delete_old_jobs, a worker with delete_jobs=successful|always)
-- from a job deleted before it ran. One row per cutover id (its latest stay: put clears it).
-- Written by a BEFORE DELETE row trigger: only a row trigger still sees the job's cutover_jobs
-- row (the cascade removes it before any AFTER trigger runs), and procrastinate's own BEFORE
-- DELETE trigger already makes every deletion row by row. Plain procrastinate jobs (no
-- cutover_jobs row) cost one index probe and leave no row.
CREATE TABLE IF NOT EXISTS cutover_departed (
    cutover_id text PRIMARY KEY,
    job_id bigint NOT NULL,
    status text NOT NULL,
    finished boolean NOT NULL,
    how text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION cutover_record_departure() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    _cutover_id text;
    _status text := OLD.status::text;
    _finished boolean := OLD.status IN ('succeeded', 'failed', 'cancelled', 'aborted');
    _how text := 'deleted after it ended';
    _stack text;
BEGIN
    -- The adapter's own remove of a job that has not ended (a drain releasing what it moved
    -- away) is a move, not an end: no row (a drain then writes nothing more per job).
    IF NOT _finished AND current_setting('cutover.moving_away', true) = 'on' THEN
        RETURN OLD;
    END IF;
    SELECT c.cutover_id INTO _cutover_id FROM cutover_jobs c WHERE c.job_id = OLD.id;
    IF _cutover_id IS NULL THEN
        RETURN OLD;
    END IF;
    IF NOT _finished THEN
        -- Procrastinate's finish (worker option delete_jobs) and cancel (delete_job=True)
        -- delete the row while it is still doing / todo: the call stack says which function
        -- deletes it. A plain DELETE of a waiting or running job is recorded as not finished.
        GET DIAGNOSTICS _stack = PG_CONTEXT;
        IF OLD.status = 'doing'
                AND _stack LIKE '%function procrastinate_finish_job_v1(%' THEN
            _status := 'succeeded or failed';
            _finished := true;
            _how := 'deleted by its procrastinate worker as it finished';
        ELSIF OLD.status = 'todo'
                AND _stack LIKE '%function procrastinate_cancel_job_v1(%' THEN
            _status := 'cancelled';
            _finished := true;
            _how := 'cancelled and deleted through procrastinate';
        ELSE
            _how := 'deleted while ' || _status;
        END IF;
    END IF;
    INSERT INTO cutover_departed (cutover_id, job_id, status, finished, how)
    VALUES (_cutover_id, OLD.id, _status, _finished, _how)
    ON CONFLICT (cutover_id) DO UPDATE
        SET job_id = EXCLUDED.job_id, status = EXCLUDED.status, finished = EXCLUDED.finished,
            how = EXCLUDED.how, deleted_at = EXCLUDED.deleted_at;
    RETURN OLD;
END
$$;
-- The WHEN clause keeps the adapter's own removals of waiting jobs (a drain's release) from
-- calling the function at all: evaluated in C, it costs a drain ~1 us a job instead of ~8.
-- (v2: the first version had no WHEN clause.)
DO $$
BEGIN
    DROP TRIGGER IF EXISTS cutover_departure ON procrastinate_jobs;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'cutover_departure_v2'
                     AND tgrelid = 'procrastinate_jobs'::regclass) THEN
        CREATE TRIGGER cutover_departure_v2 BEFORE DELETE ON procrastinate_jobs
            FOR EACH ROW
            WHEN (OLD.status NOT IN ('todo', 'doing')
                  OR current_setting('cutover.moving_away', true) IS DISTINCT FROM 'on')
            EXECUTE FUNCTION cutover_record_departure();
    END IF;
END
$$;
-- One job enqueued in one round trip (ProcrastinateBackend.enqueue of a single record; batches
-- go through COPY). Same rules as the batch path: an id that exists returns itself; a job key
-- held by a live (todo/doing) job returns that job's id; otherwise the job is inserted the way
-- defer inserts it, with its cutover_jobs row. plan_cache_mode: every statement is planned for
-- its own values, so no generic plan made while the tables were empty (seq scans) is kept as
-- they grow, analyzed or not.
CREATE OR REPLACE FUNCTION cutover_enqueue_v1(
    _cutover_id text, _queue text, _task text, _priority integer, _key text, _args jsonb,
    _scheduled_at timestamptz, _attempts integer, _max_attempts integer,
    _retry_intervals jsonb, _positional jsonb, _origin text, _created_at timestamptz,
    _native jsonb)
RETURNS text LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    _holder text;
    _job_id bigint;
BEGIN
    IF _key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtext('cutover-key:' || _key));
    END IF;
    IF EXISTS (SELECT 1 FROM cutover_jobs c WHERE c.cutover_id = _cutover_id) THEN
        RETURN _cutover_id;
    END IF;
    IF _cutover_id ~ '^pg-[0-9]{1,18}$' AND EXISTS (
            SELECT 1 FROM procrastinate_jobs j
            WHERE j.id = substr(_cutover_id, 4)::bigint
              AND NOT EXISTS (SELECT 1 FROM cutover_jobs x WHERE x.job_id = j.id)) THEN
        RETURN _cutover_id;
    END IF;
    IF _key IS NOT NULL THEN
        SELECT COALESCE(c.cutover_id, 'pg-' || j.id) INTO _holder
        FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
        WHERE j.queueing_lock = _key AND j.status = 'todo'
        UNION ALL
        SELECT COALESCE(c.cutover_id, 'pg-' || j.id)
        FROM procrastinate_jobs j LEFT JOIN cutover_jobs c ON c.job_id = j.id
        WHERE j.queueing_lock = _key AND j.status = 'doing'
        LIMIT 1;
        IF _holder IS NOT NULL THEN
            RETURN _holder;
        END IF;
    END IF;
    DELETE FROM cutover_departed d WHERE d.cutover_id = _cutover_id;
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, queueing_lock, args,
                                    scheduled_at, attempts, status)
    VALUES (_queue, _task, _priority, _key, _args, _scheduled_at, _attempts, 'todo')
    RETURNING id INTO _job_id;
    INSERT INTO cutover_jobs (job_id, cutover_id, max_attempts, retry_intervals, positional,
                              origin, created_at, native)
    VALUES (_job_id, _cutover_id, _max_attempts, _retry_intervals, _positional, _origin,
            _created_at, _native);
    RETURN _cutover_id;
END
$$;

-- The next runnable job for a cutover worker (claim_one), locked (FOR UPDATE SKIP LOCKED) for
-- the statement that starts it. Picked the way procrastinate's own fetch picks: walking
-- procrastinate_jobs_priority_idx_v1 in (priority DESC, id) order and stopping at the first row
-- that passes. The plan is pinned, not left to statistics: on a table never analyzed (every
-- table right after a drain, any server before autovacuum ran) the planner guessed a few rows,
-- read and sorted every waiting job instead (113 ms a claim at 40,000 jobs against 0.2 ms);
-- enable_sort = off leaves the index walk as the only ordered plan.
CREATE OR REPLACE FUNCTION cutover_claim_candidate_v1(_queues text[], _skip bigint[])
RETURNS bigint LANGUAGE sql
SET enable_sort = off SET plan_cache_mode = force_custom_plan AS $$
    SELECT j.id FROM procrastinate_jobs j
    LEFT JOIN cutover_jobs c ON c.job_id = j.id
    WHERE j.status = 'todo'
      AND (j.scheduled_at IS NULL OR j.scheduled_at <= now())
      AND c.held_by IS NULL
      AND (_queues IS NULL OR j.queue_name = ANY(_queues))
      AND NOT EXISTS (SELECT 1 FROM cutover_paused p WHERE p.queue = '*')
      AND NOT EXISTS (SELECT 1 FROM cutover_paused p WHERE p.queue = j.queue_name)
      AND NOT (j.id = ANY(_skip))
      AND (j.lock IS NULL OR NOT EXISTS (
            SELECT 1 FROM procrastinate_jobs d WHERE d.lock = j.lock AND d.status = 'doing'))
    ORDER BY j.priority DESC, j.id ASC
    LIMIT 1
    FOR UPDATE OF j SKIP LOCKED
$$;

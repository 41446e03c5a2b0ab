-- 0004 claims per enqueue: a claim belongs to one enqueue of a job, not to its id; one attempt
-- budget across both copies; a retry's backoff holds the claim. See cutover/fence.py's module
-- docstring and docs/architecture.md ("Fenced run").
-- {schema} is the control schema, filled in as a quoted identifier.

-- A row per enqueue of a cutover id (generation 1, 2, ... per id; verify and prune read all
-- rows of an id by cutover_id, the primary key's first column):
--   enqueued_at    the copy's enqueue stamp (JobRecord.created_at: the Router writes one
--                  record, so both copies of a dual write carry the same; a plain RQ enqueue
--                  that reuses the id stamps its own; NULL for a copy without one)
--   attempts       attempts of this enqueue so far, the running one included, across both
--                  copies: the budget's count (JobRecord.max_attempts)
--   copy_attempts  the attempts the running (or last) copy had recorded on its own backend
--                  when it claimed: a copy of the same side showing more than one more is a
--                  retry by the backend's own tools (procrastinate's retry_job_by_id)
--   released       a retry gave it up; lease_until is then the retry's time: nobody claims it
--                  before (the backoff), anybody after
--   legacy         written before 0004 (no stamp, no count): a finished one keeps the old rule
--                  (every later copy of the id is a duplicate)
ALTER TABLE {schema}.claims
    ADD COLUMN generation integer NOT NULL DEFAULT 1,
    ADD COLUMN enqueued_at timestamptz,
    ADD COLUMN attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN copy_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN released boolean NOT NULL DEFAULT false,
    ADD COLUMN legacy boolean NOT NULL DEFAULT false;
UPDATE {schema}.claims SET legacy = true;
ALTER TABLE {schema}.claims DROP CONSTRAINT claims_pkey;
ALTER TABLE {schema}.claims ADD PRIMARY KEY (cutover_id, generation);

DROP FUNCTION {schema}.claim(text, text, uuid, double precision);
DROP FUNCTION {schema}.claim_finish(text, uuid, text);
DROP FUNCTION {schema}.claim_extend(text, uuid, double precision);

-- claim: one index scan reads the id's rows (newest first, locked) and picks the one of this
-- enqueue (same stamp). Then:
--   none: a new enqueue (generation max+1): won, attempts = the copy's + 1;
--   claimed, released, its retry time passed: the next attempt, by either copy: won (the
--     count goes on from the released one's, or the copy's own when greater);
--   claimed, released, before its retry time: not won (lease_until says until when);
--   claimed by the caller: its own again (the lease extended, nothing counted): won;
--   claimed by another, lease expired: taken over (its worker died): won; the dead run's
--     attempt is not counted against the other copy (as before 0004: the backend's recovery
--     of the dead copy counts it there, and the count goes by the greater);
--   claimed by another under its lease: not won;
--   finished, on the other side: the other copy of this enqueue ran: not won (a duplicate);
--   finished, on this side: a copy recovered after a crash between the claim's finish and
--     the backend's record (not won, a duplicate) -- unless the backend's own tools enqueued
--     it again: RQ's requeue (the copy shows no run: p_fresh, and the count the worker
--     recorded, >= attempts) or procrastinate's retry (two more attempts than the copy had:
--     one for the run, one for the retry): then a new generation, won.
-- Returns the row as it stands and whether the caller won.
CREATE FUNCTION {schema}.claim(p_id text, p_side text, p_member uuid, p_lease double precision,
                               p_stamp timestamptz, p_attempts integer, p_fresh boolean)
RETURNS TABLE (won boolean, state text, side text, member uuid, lease_until timestamptz,
               takeovers integer, generation integer, attempts integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r {schema}.claims%ROWTYPE;
    c {schema}.claims%ROWTYPE;
    top integer;
    mine boolean;
    lease timestamptz := now() + make_interval(secs => p_lease);
BEGIN
    LOOP
        top := 0;
        mine := false;
        FOR r IN SELECT * FROM {schema}.claims x WHERE x.cutover_id = p_id
                 ORDER BY x.generation DESC FOR UPDATE LOOP
            IF top = 0 THEN top := r.generation; END IF;
            IF r.enqueued_at IS NOT DISTINCT FROM p_stamp OR r.legacy THEN
                c := r;
                mine := true;
                EXIT;
            END IF;
        END LOOP;
        IF mine AND c.state = 'claimed' THEN
            IF (c.released AND c.lease_until <= now())
               OR (NOT c.released AND c.member <> p_member AND c.lease_until < now()) THEN
                RETURN QUERY
                UPDATE {schema}.claims x
                SET side = p_side, member = p_member, lease_until = lease, claimed_at = now(),
                    takeovers = x.takeovers + (CASE WHEN x.released THEN 0 ELSE 1 END),
                    attempts = GREATEST(x.attempts - (CASE WHEN x.released THEN 0 ELSE 1 END),
                                        p_attempts) + 1,
                    copy_attempts = p_attempts, released = false
                WHERE x.cutover_id = p_id AND x.generation = c.generation
                RETURNING true, x.state, x.side, x.member, x.lease_until, x.takeovers,
                          x.generation, x.attempts;
                RETURN;
            ELSIF NOT c.released AND c.member = p_member THEN
                RETURN QUERY
                UPDATE {schema}.claims x SET lease_until = lease
                WHERE x.cutover_id = p_id AND x.generation = c.generation
                RETURNING true, x.state, x.side, x.member, x.lease_until, x.takeovers,
                          x.generation, x.attempts;
                RETURN;
            END IF;
            RETURN QUERY SELECT false, c.state, c.side, c.member, c.lease_until, c.takeovers,
                                c.generation, c.attempts;
            RETURN;
        END IF;
        IF mine AND (c.legacy OR c.side <> p_side
                     OR NOT ((p_fresh AND p_attempts >= c.attempts)
                             OR p_attempts >= c.copy_attempts + 2)) THEN
            RETURN QUERY SELECT false, c.state, c.side, c.member, c.lease_until, c.takeovers,
                                c.generation, c.attempts;
            RETURN;
        END IF;
        RETURN QUERY
        INSERT INTO {schema}.claims AS x (cutover_id, generation, side, member, lease_until,
                                          state, enqueued_at, attempts, copy_attempts)
        VALUES (p_id, top + 1, p_side, p_member, lease, 'claimed', p_stamp, p_attempts + 1,
                p_attempts)
        ON CONFLICT (cutover_id, generation) DO NOTHING
        RETURNING true, x.state, x.side, x.member, x.lease_until, x.takeovers, x.generation,
                  x.attempts;
        IF FOUND THEN
            RETURN;
        END IF;
        -- Another claimant inserted that generation meanwhile (committed now): look again.
    END LOOP;
END $$;

-- extend: the holder's heartbeat. False when the claim is no longer its own (taken over, or
-- released for a retry).
CREATE FUNCTION {schema}.claim_extend(p_id text, p_member uuid, p_lease double precision)
RETURNS boolean LANGUAGE sql AS $$
    WITH u AS (
        UPDATE {schema}.claims SET lease_until = now() + make_interval(secs => p_lease)
        WHERE cutover_id = p_id AND member = p_member AND state = 'claimed' AND NOT released
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- finish: the holder records the outcome (done or failed) of its enqueue's claim (p_generation;
-- NULL: the one it holds). False when it no longer holds it.
CREATE FUNCTION {schema}.claim_finish(p_id text, p_member uuid, p_state text,
                                      p_generation integer)
RETURNS boolean LANGUAGE sql AS $$
    WITH u AS (
        UPDATE {schema}.claims SET state = p_state, finished_at = now()
        WHERE cutover_id = p_id AND member = p_member
          AND (p_generation IS NULL OR generation = p_generation)
          AND state = 'claimed' AND NOT released
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- release: a retry gives the claim up until its retry time (now + p_delay: the database's
-- clock, as claim's). The attempt count stays: the next claimant, on either side, continues it.
-- Idempotent (released again by the same holder: true, the time moved).
CREATE FUNCTION {schema}.claim_release(p_id text, p_member uuid, p_generation integer,
                                       p_delay double precision)
RETURNS boolean LANGUAGE sql AS $$
    WITH u AS (
        UPDATE {schema}.claims
        SET lease_until = now() + make_interval(secs => GREATEST(p_delay, 0)), released = true
        WHERE cutover_id = p_id AND member = p_member AND state = 'claimed'
          AND (p_generation IS NULL OR generation = p_generation)
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

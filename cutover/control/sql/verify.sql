-- Verification: snapshots of both backends compared with the ledger (a temporary table).
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: verify_tables
CREATE TEMPORARY TABLE cutover_snap (
    side char(1) NOT NULL,
    id text NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    digest text NOT NULL,
    attempts integer NOT NULL,
    content text,
    ended boolean NOT NULL DEFAULT false
) ON COMMIT DROP;

-- name: verify_index
CREATE INDEX ON cutover_snap (id, side);
ANALYZE cutover_snap;

-- name: removal_record
-- A fenced worker removes a copy without running it (see migration 0003): before the removal.
INSERT INTO {schema}.removals (cutover_id, side, why) VALUES (%(id)s, %(side)s, %(why)s)
ON CONFLICT (cutover_id, side, why) DO UPDATE SET at = now();

-- name: verify_judge
-- Every ledger row of the pair (either direction; in-flight moves aside: verify_unsettled),
-- judged in one pass against both snapshots, the fence's claims and its removals. Per side
-- (s: --source, t: --target) of each job:
--   run   evidence that a copy ran there: a finished claim on that side, or a copy in a final
--         state whose backend counted an attempt since the ledger's (attempts > the ledger's)
--         or stamped its end (ended: RQ); a final copy without either was marked by hand;
--   alive the copy waits (queued, scheduled, deferred), is held, or runs (started);
--   ask   the copy is gone, where one was written (the row's target side always; its source
--         side too for a job accepted while the phase was shadow or live), and nothing here
--         says why: no finished claim there, no removal by the fence: the backend's own
--         departure record decides (verify.py), else it vanished;
--   stray a released job back on the side it was moved away from.
-- recent: the row was written from a few seconds before the snapshots were read on (since):
-- a copy gone from a snapshot may have been written after it (verify.py looks again).
-- ok_s / ok_t: a worker will run a waiting copy there in the current phase; idle_s / idle_t:
-- no worker takes anything there, not even a dry run (verify.py passes them from
-- cutover.phases.mode). A verdict is 'ran', 'failed' or 'waiting' when the SQL
-- alone proves it; every other row is 'check', concluded in verify.py with the departures.
CREATE TEMPORARY TABLE cutover_judged ON COMMIT DROP AS
WITH spans AS (
    -- The phase in force from each transition to the next (off before the first).
    SELECT "to" AS phase, at AS since, lead(at) OVER (ORDER BY at, id) AS until
    FROM {schema}.phase_log
), claim AS (
    -- The fence's claims: read here and nowhere else in verify. Per job: whether a claim
    -- finished on each side (done or failed), and of its latest enqueue (a claim is one row
    -- per enqueue, migration 0004: a requeue or a reused id is a new generation, and two
    -- finished generations are two enqueues that ran once each, not one that ran twice)
    -- whether it finished and whether it failed.
    SELECT cutover_id,
           bool_or(state <> 'claimed' AND side = %(cs)s) AS s,
           bool_or(state <> 'claimed' AND side <> %(cs)s) AS t,
           bool_or(state = 'failed' AND generation = latest) AS failed,
           count(*) FILTER (WHERE state <> 'claimed' AND generation = latest) AS finished
    FROM (SELECT cl.*, max(cl.generation) OVER (PARTITION BY cl.cutover_id) AS latest
          FROM {schema}.claims cl) c
    GROUP BY cutover_id
), removed AS (
    SELECT cutover_id, bool_or(side = %(cs)s) AS s, bool_or(side <> %(cs)s) AS t,
           string_agg(side || ' ' || why, ', ' ORDER BY side, why) AS how
    FROM {schema}.removals GROUP BY cutover_id
), j AS (
    SELECT l.cutover_id AS id, l.queue, l.state AS lstate, l.digest, l.content,
           l.source = %(source)s AS forward,
           ss.state AS s_state, ss.digest AS s_digest, ss.attempts AS s_attempts,
           ss.content AS s_content, COALESCE(ss.ended, false) AS s_ended,
           ts.state AS t_state, ts.digest AS t_digest, ts.attempts AS t_attempts,
           ts.content AS t_content, COALESCE(ts.ended, false) AS t_ended,
           COALESCE(c.s, false) AS claim_s, COALESCE(c.t, false) AS claim_t,
           COALESCE(c.failed, false) AS claim_failed, COALESCE(c.finished, 0) AS finished,
           COALESCE(r.s, false) AS removed_s, COALESCE(r.t, false) AS removed_t, r.how,
           l.state = 'accepted' AND COALESCE(p.phase, 'off') IN ('shadow', 'live') AS dual,
           l.updated_at >= %(since)s AS recent
    FROM {schema}.ledger l
    LEFT JOIN cutover_snap ss ON ss.id = l.cutover_id AND ss.side = 's'
    LEFT JOIN cutover_snap ts ON ts.id = l.cutover_id AND ts.side = 't'
    LEFT JOIN claim c ON c.cutover_id = l.cutover_id
    LEFT JOIN removed r ON r.cutover_id = l.cutover_id
    LEFT JOIN spans p ON l.state = 'accepted' AND p.since <= l.updated_at
                         AND (p.until IS NULL OR p.until > l.updated_at)
    WHERE ((l.source = %(source)s AND l.target = %(target)s)
           OR (l.source = %(target)s AND l.target = %(source)s))
      AND l.state IN ('released', 'accepted')
), k AS (
    SELECT j.*,
           CASE WHEN s_state IS NULL OR s_digest = digest THEN 0
                ELSE (content::jsonb ->> 'attempts')::int END AS s_base,
           CASE WHEN t_state IS NULL OR t_digest = digest THEN 0
                ELSE (content::jsonb ->> 'attempts')::int END AS t_base,
           CASE WHEN forward THEN dual ELSE true END AS want_s,
           CASE WHEN forward THEN true ELSE dual END AS want_t
    FROM j
), f AS (
    SELECT k.*,
           claim_s OR COALESCE(s_state IN ('finished', 'failed', 'canceled')
                               AND (s_ended OR (s_digest <> digest AND s_attempts > s_base)),
                               false) AS s_run,
           claim_t OR COALESCE(t_state IN ('finished', 'failed', 'canceled')
                               AND (t_ended OR (t_digest <> digest AND t_attempts > t_base)),
                               false) AS t_run,
           COALESCE(s_state IN ('queued', 'scheduled', 'deferred', 'held', 'started'),
                    false) AS s_alive,
           COALESCE(t_state IN ('queued', 'scheduled', 'deferred', 'held', 'started'),
                    false) AS t_alive,
           s_state IS NULL AND NOT claim_s AND NOT removed_s AND want_s AS s_ask,
           t_state IS NULL AND NOT claim_t AND NOT removed_t AND want_t AS t_ask,
           lstate = 'released' AND ((forward AND s_state IS NOT NULL)
                                    OR (NOT forward AND t_state IS NOT NULL)) AS stray,
           -- Altered: a content field a run does not change differs, on any copy; or a copy
           -- that has not run (alive, no attempt since the ledger's) differs at all.
           -- (Not on the side a released job left: a copy there is stray, another job.)
           (s_state IS NOT NULL AND s_digest <> digest AND NOT (lstate = 'released' AND forward)
            AND (
                (s_state IN ('queued', 'scheduled', 'deferred', 'held')
                 AND s_attempts <= s_base)
                OR s_content IS NULL  -- undecodable, or never attempted (the line above)
                OR (s_content::jsonb -> 'task', s_content::jsonb -> 'args',
                    s_content::jsonb -> 'kwargs', s_content::jsonb -> 'queue',
                    s_content::jsonb -> 'job_key')
                   IS DISTINCT FROM
                   (content::jsonb -> 'task', content::jsonb -> 'args',
                    content::jsonb -> 'kwargs', content::jsonb -> 'queue',
                    content::jsonb -> 'job_key')))
           OR (t_state IS NOT NULL AND t_digest <> digest
               AND NOT (lstate = 'released' AND NOT forward) AND (
                (t_state IN ('queued', 'scheduled', 'deferred', 'held')
                 AND t_attempts <= t_base)
                OR t_content IS NULL  -- undecodable, or never attempted (the line above)
                OR (t_content::jsonb -> 'task', t_content::jsonb -> 'args',
                    t_content::jsonb -> 'kwargs', t_content::jsonb -> 'queue',
                    t_content::jsonb -> 'job_key')
                   IS DISTINCT FROM
                   (content::jsonb -> 'task', content::jsonb -> 'args',
                    content::jsonb -> 'kwargs', content::jsonb -> 'queue',
                    content::jsonb -> 'job_key'))) AS altered
    FROM k
)
SELECT id, queue, lstate, forward, digest, s_state, t_state, s_digest, t_digest, s_run, t_run,
       s_alive, t_alive, s_ask, t_ask, stray, altered, claim_s, claim_t, claim_failed, finished,
       how, s_ended, t_ended, recent,
       GREATEST(s_run::int + t_run::int, finished) AS runs,
       (s_alive AND (%(ok_s)s OR s_state IN ('held', 'started')))
       OR (t_alive AND (%(ok_t)s OR t_state IN ('held', 'started'))) AS waits,
       CASE
           WHEN altered OR stray OR s_ask OR t_ask
                OR GREATEST(s_run::int + t_run::int, finished) > 1
                -- waiting again where it ran, on a side no worker takes anything from now
                OR (%(idle_s)s AND s_run AND s_state IN ('queued', 'scheduled', 'deferred'))
                OR (%(idle_t)s AND t_run AND t_state IN ('queued', 'scheduled', 'deferred'))
                THEN 'check'
           WHEN s_run OR t_run THEN
               CASE WHEN claim_failed OR (s_run AND s_state = 'failed')
                         OR (t_run AND t_state = 'failed') THEN 'failed' ELSE 'ran' END
           WHEN (s_alive AND (%(ok_s)s OR s_state IN ('held', 'started')))
                OR (t_alive AND (%(ok_t)s OR t_state IN ('held', 'started'))) THEN 'waiting'
           ELSE 'check'
       END AS verdict,
       (t_run OR (t_alive AND t_digest <> digest AND t_attempts > t_base)) AS t_ran
FROM f;

-- name: verify_clock
-- The database's clock (the ledger's updated_at is its now()), read before the snapshots.
SELECT clock_timestamp();

-- name: verify_verdicts
-- Per queue and verdict: how many jobs, how many ran on the target, and (released jobs moved
-- to the target) the fingerprints of the ledger's digests and of the target copies' (count and
-- sum of 60-bit digest prefixes): the report's per-queue summary.
SELECT queue, verdict, count(*), count(*) FILTER (WHERE t_ran),
       count(*) FILTER (WHERE lstate = 'released' AND forward),
       COALESCE(sum(('x' || substr(digest, 1, 15))::bit(60)::bigint::numeric)
                FILTER (WHERE lstate = 'released' AND forward), 0),
       count(*) FILTER (WHERE lstate = 'released' AND forward AND t_state IS NOT NULL),
       COALESCE(sum(('x' || substr(t_digest, 1, 15))::bit(60)::bigint::numeric)
                FILTER (WHERE lstate = 'released' AND forward AND t_state IS NOT NULL
                        AND t_digest ~ '^[0-9a-f]{{15}}'), 0)
FROM cutover_judged GROUP BY queue, verdict;

-- name: verify_checks
-- The rows the SQL could not settle alone, for verify.py (a server-side cursor: in batches),
-- with the ledger's content (for the fields of an altered job).
SELECT j.id, j.queue, lstate, forward, s_state, t_state, s_run, t_run, s_alive, t_alive,
       s_ask, t_ask, stray, altered, runs, waits, claim_s, claim_t, finished, how,
       s_ended, t_ended, claim_failed, recent, l.content
FROM cutover_judged j LEFT JOIN {schema}.ledger l ON l.cutover_id = j.id
WHERE verdict = 'check' ORDER BY j.id;

-- name: verify_unsettled
SELECT l.cutover_id, l.state, ts.state, ss.state
FROM {schema}.ledger l
LEFT JOIN cutover_snap ts ON ts.id = l.cutover_id AND ts.side = 't'
LEFT JOIN cutover_snap ss ON ss.id = l.cutover_id AND ss.side = 's'
WHERE ((l.source = %(source)s AND l.target = %(target)s)
       OR (l.source = %(target)s AND l.target = %(source)s))
  AND l.state IN ('moving', 'moved');

-- name: verify_both
-- The same id in both backends with no ledger row of this pair: no copy the toolkit wrote.
SELECT s.id, s.state, t.state
FROM cutover_snap s JOIN cutover_snap t ON t.id = s.id AND t.side = 't'
LEFT JOIN {schema}.ledger l ON l.cutover_id = s.id
     AND ((l.source = %(source)s AND l.target = %(target)s)
          OR (l.source = %(target)s AND l.target = %(source)s))
WHERE s.side = 's' AND l.cutover_id IS NULL;

-- name: verify_held
-- Jobs either backend holds (taken by a drain): stuck unless that drain is alive.
SELECT side, id FROM cutover_snap WHERE state = 'held' ORDER BY side, id;

-- name: verify_count
SELECT side, count(*) FROM cutover_snap GROUP BY side;

-- Verification: snapshots of both backends compared with the ledger (a temporary table).
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: verify_tables
CREATE TEMPORARY TABLE cutover_snap (
    side char(1) NOT NULL,
    id text NOT NULL,
    queue text NOT NULL,
    state text NOT NULL,
    digest text NOT NULL,
    attempts integer NOT NULL
) ON COMMIT DROP;

-- name: verify_index
CREATE INDEX ON cutover_snap (id, side);
ANALYZE cutover_snap;

-- name: verify_fingerprints
-- Per queue: count and sum of digest prefixes of the ledger's settled jobs, and of the copies
-- the target holds of those jobs. Equal fingerprints: nothing to compare id by id.
WITH l AS (
    SELECT queue, count(*) AS n,
           sum(('x' || substr(digest, 1, 15))::bit(60)::bigint::numeric) AS s
    FROM {schema}.ledger
    WHERE source = %(source)s AND target = %(target)s AND state = 'released'
    GROUP BY queue
), t AS (
    SELECT l2.queue, count(*) AS n,
           sum(('x' || substr(s.digest, 1, 15))::bit(60)::bigint::numeric) AS s
    FROM {schema}.ledger l2 JOIN cutover_snap s ON s.id = l2.cutover_id AND s.side = 't'
    WHERE l2.source = %(source)s AND l2.target = %(target)s AND l2.state = 'released'
    GROUP BY l2.queue
)
SELECT COALESCE(l.queue, t.queue), COALESCE(l.n, 0), COALESCE(l.s, 0), COALESCE(t.n, 0),
       COALESCE(t.s, 0)
FROM l FULL JOIN t ON l.queue = t.queue;

-- name: verify_settled
-- Jobs of the queues whose fingerprints differ: lost, executed-and-changed, or mismatched.
SELECT l.cutover_id, l.queue, l.digest, ts.state, ts.digest, ss.state, l.content, ts.attempts
FROM {schema}.ledger l
LEFT JOIN cutover_snap ts ON ts.id = l.cutover_id AND ts.side = 't'
LEFT JOIN cutover_snap ss ON ss.id = l.cutover_id AND ss.side = 's'
WHERE l.source = %(source)s AND l.target = %(target)s AND l.state = 'released'
  AND l.queue = ANY(%(queues)s::text[])
  AND (ts.id IS NULL OR ts.digest <> l.digest OR ss.id IS NOT NULL);

-- name: verify_unsettled
SELECT l.cutover_id, l.state, ts.state, ss.state
FROM {schema}.ledger l
LEFT JOIN cutover_snap ts ON ts.id = l.cutover_id AND ts.side = 't'
LEFT JOIN cutover_snap ss ON ss.id = l.cutover_id AND ss.side = 's'
WHERE l.source = %(source)s AND l.target = %(target)s AND l.state IN ('moving', 'moved');

-- name: verify_both
-- The same id in both backends, outside the ledger's in-flight moves.
SELECT s.id, s.state, t.state
FROM cutover_snap s JOIN cutover_snap t ON t.id = s.id AND t.side = 't'
LEFT JOIN {schema}.ledger l ON l.cutover_id = s.id AND l.source = %(source)s
     AND l.target = %(target)s AND l.state IN ('moving', 'moved')
WHERE s.side = 's' AND l.cutover_id IS NULL;

-- name: verify_held
-- Jobs either backend holds (taken by a drain): stuck unless that drain is alive.
SELECT side, id FROM cutover_snap WHERE state = 'held' ORDER BY side, id;

-- name: verify_count
SELECT side, count(*) FROM cutover_snap GROUP BY side;

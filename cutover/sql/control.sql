-- The control plane, in the PostgreSQL database of whichever side is PostgreSQL, in the schema
-- named by CUTOVER_SCHEMA (default "cutover"). {schema} is filled in as a quoted identifier.

-- name: lock
SELECT pg_advisory_xact_lock(hashtext('cutover.control.init'));

-- name: create
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.schema_version (
    version integer NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.phase (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    phase text NOT NULL DEFAULT 'off',
    epoch bigint NOT NULL DEFAULT 0,
    changed_at timestamptz,
    changed_by text,
    reason text
);
INSERT INTO {schema}.phase (id) VALUES (1) ON CONFLICT DO NOTHING;
-- One row per job the toolkit moved or accepted: where it lives now and what it contains.
-- No index but the primary key, and pages half full: marking a row released is then a HOT update
-- (the new version on the same page, no index entry), a third of the cost of a normal one. The
-- queries by pair and state scan the table, once per drain or verify.
CREATE TABLE IF NOT EXISTS {schema}.ledger (
    cutover_id text PRIMARY KEY,
    task text NOT NULL,
    queue text NOT NULL,
    digest text NOT NULL,
    content text,
    state text NOT NULL CHECK (state IN ('moving', 'moved', 'released', 'accepted')),
    source text NOT NULL,
    target text NOT NULL,
    source_id text,
    target_id text,
    origin text,
    run_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);
-- (An index of an earlier version, which made every release mark a full update.)
DROP INDEX IF EXISTS {schema}.ledger_pair_state_idx;
-- Moves the ledger rows of a batch (ids joined by newlines) of one pair to a new state. A join
-- on unnest, probing the primary key once per id, whatever the planner thinks of the ledger's
-- size: before the ledger has statistics it estimates a filter on source and target at one row,
-- and would loop over the whole ledger once per id (or hash all of it, once per batch).
CREATE OR REPLACE FUNCTION {schema}.ledger_mark(ids text, new_state text, src text, tgt text)
RETURNS void LANGUAGE sql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
    UPDATE {schema}.ledger l SET state = new_state, updated_at = now()
    FROM unnest(string_to_array(ids, E'\n')) AS u(id)
    WHERE l.cutover_id = u.id AND l.source = src AND l.target = tgt
$$;
CREATE TABLE IF NOT EXISTS {schema}.failures (
    id bigserial PRIMARY KEY,
    run_id text,
    cutover_id text NOT NULL,
    backend text NOT NULL,
    class text NOT NULL,
    reason text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS failures_job_idx ON {schema}.failures (cutover_id);
CREATE TABLE IF NOT EXISTS {schema}.runs (
    run_id text PRIMARY KEY,
    kind text NOT NULL,
    source text NOT NULL,
    target text NOT NULL,
    state text NOT NULL DEFAULT 'running',
    switch text NOT NULL DEFAULT 'run' CHECK (switch IN ('run', 'pause', 'stop')),
    options jsonb,
    moved bigint NOT NULL DEFAULT 0,
    left_behind bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
-- Store identities (additive, safe on a control schema of an earlier version). The ledger,
-- the runs and the pair lock name a backend by its store's identity key (see StoreIdentity),
-- so that two spellings of one store share one history and one lock; `stores` keeps the
-- redacted URL each key was last reached by, for reports.
DO $$
BEGIN
    IF to_regclass('{schema}.stores') IS NULL THEN
        -- The keys an earlier version wrote (adapter+redacted URL): a drain, verify or release
        -- that meets its own spelling of one moves its rows to the identity (ControlPlane.adopt).
        CREATE TABLE {schema}.legacy_keys (key text PRIMARY KEY);
        INSERT INTO {schema}.legacy_keys
        SELECT source FROM {schema}.ledger UNION SELECT target FROM {schema}.ledger
        UNION SELECT source FROM {schema}.runs UNION SELECT target FROM {schema}.runs;
        CREATE TABLE {schema}.stores (
            key text PRIMARY KEY,
            url text NOT NULL,
            seen_at timestamptz NOT NULL DEFAULT now()
        );
    END IF;
END $$;
ALTER TABLE {schema}.runs ADD COLUMN IF NOT EXISTS source_url text;
ALTER TABLE {schema}.runs ADD COLUMN IF NOT EXISTS target_url text;
INSERT INTO {schema}.schema_version (version)
SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM {schema}.schema_version);

-- name: present
SELECT to_regclass(%(table)s) IS NOT NULL;

-- name: identity_ready
-- Whether `cutover init` of this version ran (stores and the runs' URL columns exist).
SELECT to_regclass(%(stores)s) IS NOT NULL AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = %(schema)s AND table_name = 'runs' AND column_name = 'target_url');

-- name: store_seen
INSERT INTO {schema}.stores (key, url) VALUES (%(key)s, %(url)s)
ON CONFLICT (key) DO UPDATE SET url = EXCLUDED.url, seen_at = now();

-- name: store_url
SELECT url FROM {schema}.stores WHERE key = %(key)s;

-- name: adopt_legacy
-- Rows an earlier version keyed on this spelling's URL now belong to the store's identity.
WITH gone AS (DELETE FROM {schema}.legacy_keys WHERE key = %(legacy)s RETURNING key),
     l1 AS (UPDATE {schema}.ledger SET source = %(key)s WHERE source IN (SELECT key FROM gone)
            RETURNING 1),
     l2 AS (UPDATE {schema}.ledger SET target = %(key)s WHERE target IN (SELECT key FROM gone)
            RETURNING 1),
     r1 AS (UPDATE {schema}.runs SET source = %(key)s WHERE source IN (SELECT key FROM gone)
            RETURNING 1),
     r2 AS (UPDATE {schema}.runs SET target = %(key)s WHERE target IN (SELECT key FROM gone)
            RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM l1) + (SELECT count(*) FROM l2);

-- name: phase
SELECT phase, epoch, changed_at, changed_by, reason FROM {schema}.phase WHERE id = 1;

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

-- 0001 baseline: the control schema as it stood before numbered migrations (stores, legacy
-- keys, the runs' URL columns included). Written to be idempotent, so that `cutover init` on a
-- schema made by an earlier, unversioned version brings it to this shape and stamps it 1.
-- {schema} is the control schema, filled in as a quoted identifier.

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

-- 0003 removals: the copies the fence took out of a backend without running them, so that
-- verify can tell them from copies that vanished behind the toolkit's back.
-- {schema} is the control schema, filled in as a quoted identifier.

-- One row per job, side and reason: a worker removed its side's copy as a duplicate (the other
-- copy's claim had finished: PhaseGate.duplicate) or after a shadow dry run
-- (PhaseGate.dry_run). Written before the copy is removed, so a removal is never seen without
-- its record. shadow_results alone does not say this: it records a verdict, not a removal
-- (a dry run may leave a copy in place), and says nothing of duplicates.
-- (IF NOT EXISTS: a schema taken back to an earlier shape by hand may still hold it.)
CREATE TABLE IF NOT EXISTS {schema}.removals (
    cutover_id text NOT NULL,
    side text NOT NULL CHECK (side IN ('source', 'target')),
    why text NOT NULL CHECK (why IN ('duplicate', 'dry_run')),
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cutover_id, side, why)
);

-- 0002 staged cut-over: the phase's epoch and pair, its history, the fleet, the fence's claims,
-- the shadow results and the audit trail.
-- {schema} is the control schema, filled in as a quoted identifier.

-- The phase row keeps its columns (phase, epoch, changed_at, changed_by, reason) and learns the
-- pair it belongs to: fixed at the first transition, so that a command naming another pair is
-- refused rather than steering someone else's cut-over.
ALTER TABLE {schema}.phase
    ADD COLUMN source_key text,
    ADD COLUMN source_url text,
    ADD COLUMN target_key text,
    ADD COLUMN target_url text,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT phase_known
        CHECK (phase IN ('off', 'shadow', 'live', 'rampdown', 'complete'));

-- Every transition, forced or not, with who asked and why.
CREATE TABLE {schema}.phase_log (
    id bigserial PRIMARY KEY,
    frm text NOT NULL,
    "to" text NOT NULL,
    epoch bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('advance', 'rollback', 'set')),
    who text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    why text,
    forced boolean NOT NULL DEFAULT false,
    refusals jsonb NOT NULL DEFAULT '[]'::jsonb
);

-- Producers (Router) and cutover workers. Alive = heartbeat within a lease; the clock is the
-- database's (now()), so hosts with skewed clocks agree.
CREATE TABLE {schema}.fleet (
    member uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('producer', 'worker')),
    side text CHECK (side IN ('source', 'target')),
    backend text,
    host text NOT NULL,
    pid integer NOT NULL,
    mode text,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    acked_epoch bigint NOT NULL DEFAULT 0,
    -- The ids the member is known by in its backend's own worker registry (a cutover worker on
    -- procrastinate registers in procrastinate_workers): not counted as native bypassers.
    native_ids text[] NOT NULL DEFAULT '{{}}',
    metrics jsonb
);
CREATE INDEX fleet_heartbeat_idx ON {schema}.fleet (heartbeat_at);

-- The fence: a job (by cutover id) runs on the side whose member claimed it first. A claim
-- whose lease ran out while still 'claimed' (its worker died) may be taken over.
CREATE TABLE {schema}.claims (
    cutover_id text PRIMARY KEY,
    side text NOT NULL CHECK (side IN ('source', 'target')),
    member uuid NOT NULL,
    lease_until timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('claimed', 'done', 'failed')),
    claimed_at timestamptz NOT NULL DEFAULT now(),
    takeovers integer NOT NULL DEFAULT 0,
    finished_at timestamptz
);

-- The fence's verbs as functions: one round trip each, and every statement inside is a probe
-- of the primary key, so the plan is the same whatever the size of the table (and of its
-- statistics, which a young table lacks).
-- claim: the first claimant wins; a claim still 'claimed' past its lease is taken over; the
-- holder claiming again extends its own. Returns the row as it stands, and whether we won.
CREATE FUNCTION {schema}.claim(p_id text, p_side text, p_member uuid, p_lease double precision)
RETURNS TABLE (won boolean, state text, side text, member uuid, lease_until timestamptz,
               takeovers integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    INSERT INTO {schema}.claims AS c (cutover_id, side, member, lease_until, state)
    VALUES (p_id, p_side, p_member, now() + make_interval(secs => p_lease), 'claimed')
    ON CONFLICT (cutover_id) DO UPDATE
        SET side = EXCLUDED.side, member = EXCLUDED.member, lease_until = EXCLUDED.lease_until,
            claimed_at = now(),
            takeovers = c.takeovers + (CASE WHEN c.member = EXCLUDED.member THEN 0 ELSE 1 END)
        WHERE c.state = 'claimed' AND (c.lease_until < now() OR c.member = EXCLUDED.member)
    RETURNING true, c.state, c.side, c.member, c.lease_until, c.takeovers;
    IF NOT FOUND THEN
        RETURN QUERY
        SELECT false, c.state, c.side, c.member, c.lease_until, c.takeovers
        FROM {schema}.claims c WHERE c.cutover_id = p_id;
    END IF;
END $$;

-- extend: the holder's heartbeat. False when the claim is no longer its own (taken over).
CREATE FUNCTION {schema}.claim_extend(p_id text, p_member uuid, p_lease double precision)
RETURNS boolean LANGUAGE sql AS $$
    WITH u AS (
        UPDATE {schema}.claims SET lease_until = now() + make_interval(secs => p_lease)
        WHERE cutover_id = p_id AND member = p_member AND state = 'claimed'
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- finish: the holder records the outcome (done or failed). False when it no longer holds it.
CREATE FUNCTION {schema}.claim_finish(p_id text, p_member uuid, p_state text)
RETURNS boolean LANGUAGE sql AS $$
    WITH u AS (
        UPDATE {schema}.claims SET state = p_state, finished_at = now()
        WHERE cutover_id = p_id AND member = p_member AND state = 'claimed'
        RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM u)
$$;

-- Dry runs of the target in shadow: did the target's copy match the source's?
CREATE TABLE {schema}.shadow_results (
    cutover_id text PRIMARY KEY,
    matched boolean NOT NULL,
    detail text,
    at timestamptz NOT NULL DEFAULT now()
);

-- The audit trail: phase changes, forced overrides, drains that followed them, ...
CREATE TABLE {schema}.events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    kind text NOT NULL,
    detail jsonb NOT NULL DEFAULT '[]'::jsonb
);
CREATE INDEX events_at_idx ON {schema}.events (at);

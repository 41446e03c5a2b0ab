-- The fence: claims that let each enqueue of a job run on one side only (functions in
-- migrations 0002 and 0004: a row per enqueue of a cutover id, see 0004).
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: claim
SELECT won, state, side, member, lease_until, takeovers, generation, attempts
FROM {schema}.claim(%(id)s, %(side)s, %(member)s, %(lease)s, %(stamp)s::timestamptz,
                    %(attempts)s::integer, %(fresh)s::boolean);

-- name: claim_extend
SELECT {schema}.claim_extend(%(id)s, %(member)s, %(lease)s);

-- name: claim_finish
-- Idempotent for the holder: run again after an unknown outcome (its connection lost after the
-- commit: the plane's statements are retried, cutover.control.plane), it finds the claim of
-- this enqueue finished by this member in this state and answers true again. (The EXISTS reads
-- the statement's snapshot, from before the function's update: true only for an earlier
-- finish.) claim (the holder's own again), claim_extend and claim_release are so already.
SELECT {schema}.claim_finish(%(id)s, %(member)s, %(state)s, %(generation)s::integer)
    OR EXISTS (SELECT 1 FROM {schema}.claims WHERE cutover_id = %(id)s
               AND (%(generation)s::integer IS NULL OR generation = %(generation)s::integer)
               AND member = %(member)s AND state = %(state)s);

-- name: claim_get
-- The claim of the id's newest enqueue (with a stamp: of the newest enqueue with that stamp,
-- or a claim written before 0004).
SELECT true, state, side, member, lease_until, takeovers, generation, attempts
FROM {schema}.claims
WHERE cutover_id = %(id)s
  AND (%(any)s OR enqueued_at IS NOT DISTINCT FROM %(stamp)s::timestamptz OR legacy)
ORDER BY generation DESC
LIMIT 1;

-- name: claim_release
-- A retry gives the claim up until its retry time (now + delay, the database's clock): the
-- next attempt, a copy on either side, claims it then through claim(), counting on.
SELECT {schema}.claim_release(%(id)s, %(member)s, %(generation)s::integer,
                              %(delay)s::double precision);

-- name: claims_finished_before
-- A prune's candidates: finished claims (done or failed) whose end is older than the grace,
-- oldest first, at most %(limit)s. No index on finished_at: one more index would cost every
-- claim's finish a write, and a prune is rare; this reads the table once per prune.
SELECT cutover_id FROM {schema}.claims
WHERE state <> 'claimed' AND finished_at < now() - make_interval(secs => %(older)s)
ORDER BY finished_at
LIMIT %(limit)s;

-- name: claims_prune
-- Delete those of the candidates that no backend holds a live copy of (checked by the caller,
-- cutover.fence.prune_claims), if they are still finished and past the grace.
DELETE FROM {schema}.claims
WHERE cutover_id = ANY(%(ids)s::text[]) AND state <> 'claimed'
  AND finished_at < now() - make_interval(secs => %(older)s);

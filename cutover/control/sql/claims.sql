-- The fence: claims that let each job run on one side only (functions in migration 0002).
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: claim
SELECT won, state, side, member, lease_until, takeovers
FROM {schema}.claim(%(id)s, %(side)s, %(member)s, %(lease)s);

-- name: claim_extend
SELECT {schema}.claim_extend(%(id)s, %(member)s, %(lease)s);

-- name: claim_finish
SELECT {schema}.claim_finish(%(id)s, %(member)s, %(state)s);

-- name: claim_get
SELECT true, state, side, member, lease_until, takeovers FROM {schema}.claims
WHERE cutover_id = %(id)s;

-- name: claim_release
-- A retry gives the claim up: its lease ends now, so the next attempt (a copy on either side)
-- takes it over through claim(). The row stays (takeovers keeps counting).
UPDATE {schema}.claims SET lease_until = now() - interval '1 millisecond'
WHERE cutover_id = %(id)s AND member = %(member)s AND state = 'claimed'
RETURNING true;

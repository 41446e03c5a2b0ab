-- The fleet: producers (Router) and cutover workers, with heartbeats and the epoch each has
-- acknowledged. Liveness is judged on the database's clock.
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: fleet_register
INSERT INTO {schema}.fleet (member, kind, side, backend, host, pid, mode, acked_epoch)
VALUES (%(member)s, %(kind)s, %(side)s, %(backend)s, %(host)s, %(pid)s, %(mode)s, %(epoch)s)
ON CONFLICT (member) DO UPDATE SET heartbeat_at = now(), mode = EXCLUDED.mode;

-- name: fleet_heartbeat
-- False (no row) when the member was removed (deregistered, or pruned): it registers again.
UPDATE {schema}.fleet
SET heartbeat_at = now(), mode = COALESCE(%(mode)s, mode),
    metrics = COALESCE(%(metrics)s::jsonb, metrics),
    native_ids = COALESCE(%(native_ids)s::text[], native_ids)
WHERE member = %(member)s
RETURNING member;

-- name: fleet_ack
-- An epoch is acknowledged once everything the member did under the older epochs is finished;
-- never moves backwards.
UPDATE {schema}.fleet
SET acked_epoch = GREATEST(acked_epoch, %(epoch)s), heartbeat_at = now()
WHERE member = %(member)s
RETURNING member;

-- name: fleet_alive
SELECT member, kind, side, backend, host, pid, mode, started_at, heartbeat_at, acked_epoch,
       metrics, native_ids
FROM {schema}.fleet
WHERE heartbeat_at >= now() - make_interval(secs => %(lease)s)
ORDER BY kind, side, started_at;

-- name: fleet_member_here
-- Read on a backend's connection: finding this member's own row (a random uuid) there proves the
-- backend's database holds this very control plane, so the fence's claim and finish can join
-- the backend's transactions (cutover.fence). A database without the schema fails: not shared.
SELECT true FROM {schema}.fleet WHERE member = %(member)s;

-- name: fleet_deregister
DELETE FROM {schema}.fleet WHERE member = %(member)s;

-- name: fleet_prune
-- Members silent for much longer than a lease: their process is gone.
DELETE FROM {schema}.fleet WHERE heartbeat_at < now() - make_interval(secs => %(older)s);

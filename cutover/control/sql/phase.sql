-- The phase of the staged cut-over, its history, and the audit trail.
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: phase_read
SELECT phase, epoch, changed_at, changed_by, reason, source_key, source_url, target_key,
       target_url, updated_at
FROM {schema}.phase WHERE id = 1;

-- name: phase_lock
-- The transition's lock: a second operator waits here, then finds the phase moved on; so does
-- a transition while an application transaction that enqueued with connection= is open
-- (phase_hold), up to the lock_timeout the transition sets.
SELECT phase, epoch, changed_at, changed_by, reason, source_key, source_url, target_key,
       target_url, updated_at
FROM {schema}.phase WHERE id = 1 FOR UPDATE;

-- name: phase_hold
-- In an application's own transaction that enqueues with connection= (Router): a share lock on
-- the phase row, held until that transaction ends. A transition (phase_lock, FOR UPDATE) waits
-- for it, so no phase change commits while a job routed by the old phase is still uncommitted:
-- "every producer acknowledged the epoch" then also covers jobs not yet committed, and a
-- rollback's move back finds them. The epoch read says whether the route still holds.
SELECT epoch FROM {schema}.phase WHERE id = 1 FOR SHARE;

-- name: phase_lock_timeout
SELECT set_config('lock_timeout', %(ms)s, true);

-- name: phase_write
UPDATE {schema}.phase
SET phase = %(phase)s, epoch = epoch + 1, changed_at = now(), changed_by = %(who)s,
    reason = %(why)s, updated_at = now(),
    source_key = COALESCE(source_key, %(source_key)s),
    source_url = COALESCE(source_url, %(source_url)s),
    target_key = COALESCE(target_key, %(target_key)s),
    target_url = COALESCE(target_url, %(target_url)s)
WHERE id = 1
RETURNING phase, epoch, changed_at, changed_by, reason, source_key, source_url, target_key,
          target_url, updated_at;

-- name: phase_log_add
INSERT INTO {schema}.phase_log (frm, "to", epoch, kind, who, host, pid, why, forced, refusals)
VALUES (%(frm)s, %(to)s, %(epoch)s, %(kind)s, %(who)s, %(host)s, %(pid)s, %(why)s, %(forced)s,
        %(refusals)s);

-- name: phase_notify
-- Delivered at commit, to every session that LISTENs (PhaseWatcher): the payload names the
-- schema, so that two control schemas in one database do not wake each other's readers.
SELECT pg_notify('cutover_phase', %(payload)s);

-- name: phase_log_tail
SELECT frm, "to", epoch, kind, who, host, pid, at, why, forced, refusals
FROM {schema}.phase_log ORDER BY id DESC LIMIT %(limit)s;

-- name: event_add
INSERT INTO {schema}.events (kind, detail) VALUES (%(kind)s, %(detail)s);

-- name: events_tail
SELECT id, at, kind, detail FROM {schema}.events ORDER BY id DESC LIMIT %(limit)s;

-- name: shadow_record
-- A dry run's verdict; the latest one counts for a job checked again.
INSERT INTO {schema}.shadow_results (cutover_id, matched, detail) VALUES (%(id)s, %(matched)s,
                                                                          %(detail)s)
ON CONFLICT (cutover_id) DO UPDATE SET matched = EXCLUDED.matched, detail = EXCLUDED.detail,
                                       at = now();

-- name: shadow_rate
SELECT count(*), count(*) FILTER (WHERE matched) FROM {schema}.shadow_results;

-- name: shadow_mismatches
SELECT cutover_id, detail FROM {schema}.shadow_results WHERE NOT matched
ORDER BY at DESC LIMIT %(limit)s;

-- name: phase_change_lock
-- A phase command's session lock, held on its own connection from its read of the phase to the
-- end of its move back: a second phase command on this control plane meanwhile is refused
-- (two bare rollbacks would otherwise both step back). A killed command's session ends, and
-- its lock with it.
SELECT pg_try_advisory_lock(hashtext('cutover.phase_change'), hashtext(%(schema)s));

-- name: phase_change_holder
-- Who holds phase_change_lock: the application_name its command set, and since when.
SELECT a.application_name, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = hashtext('cutover.phase_change')::oid
  AND l.objid = hashtext(%(schema)s)::oid
LIMIT 1;

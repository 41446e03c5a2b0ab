-- The control plane itself: schema presence and the stores it has met.
-- {schema} is the control schema, filled in as a quoted identifier.

-- name: present
SELECT to_regclass(%(table)s) IS NOT NULL;

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

-- name: plane_system
-- Which database the plane is in, whatever the URL's spelling (cutover.marker compares it):
-- the cluster (system_identifier; pg_control_system() is executable by PUBLIC unless an
-- administrator revoked it: then plane_place alone, see Plumbing.identity)...
SELECT system_identifier::text FROM pg_control_system();

-- name: plane_place
-- ... and the database (its name, and its oid for the fallback).
SELECT current_database(), (SELECT oid::text FROM pg_catalog.pg_database
                            WHERE datname = current_database());

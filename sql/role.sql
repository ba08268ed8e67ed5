-- A least-privilege role for walpoints on the source: it may stream the WAL (REPLICATION) and
-- read the three business tables (for the one-time initial snapshot), and nothing else.
-- Run as a superuser in the exchange database; change the password.
CREATE ROLE walpoints WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO walpoints;
GRANT SELECT ON trades, positions, referral_relations TO walpoints;
-- The heartbeat (pg_logical_emit_message) needs no further grant.

-- The store: by default a database named walpoints on this server, owned by the walpoints role
-- so that `walpoints setup` can create its schema there. (Or point store.url elsewhere.)
CREATE DATABASE walpoints OWNER walpoints;

-- A least-privilege role for walpoints on the source: it may stream the WAL (REPLICATION) and
-- read the three business tables (for the one-time initial snapshot), and nothing else.
-- Run as a superuser in the exchange database; change the password.
CREATE ROLE walpoints WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO walpoints;
GRANT SELECT ON trades, positions, referral_relations TO walpoints;

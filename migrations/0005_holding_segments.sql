-- Holding entries become segments: one entry per change of a position's notional, its close or
-- delete, or the end of an epoch, holding the sum of the hourly credits that went to the totals
-- as the hours passed. Before, every open position wrote one entry per hour (24,000,000 rows a
-- day at 1,000,000 open positions).
--
-- The hourly entries written so far stay as they are. An open position's next segment must not
-- cover hours already in them, so its `since` (where its open segment starts) moves up to the
-- last settled hour: the start of the hour of the source's stream time.
UPDATE walpoints.state_open_position p
SET since = greatest(p.since,
                     c.stream_time - ((c.stream_time % 3600000000) + 3600000000) % 3600000000)
FROM walpoints.checkpoint c
WHERE c.source_id = p.source_id AND c.stream_time IS NOT NULL;

-- A journal replays into segments where the ledger holds hours. For each source with hourly
-- holding entries in the compact ledger (or whose journal began at an earlier upgrade), replay
-- now starts here: the journal is complete from this checkpoint, with the rules engine's state
-- of this moment kept beside it.
CREATE TEMPORARY TABLE restarted AS
SELECT c.source_id FROM walpoints.checkpoint c
WHERE c.journal_from IS NOT NULL
   OR EXISTS (SELECT 1 FROM walpoints.ledger_position l
              WHERE l.source_id = c.source_id AND l.kind = 'holding');
UPDATE walpoints.checkpoint SET journal_from = lsn
WHERE source_id IN (SELECT source_id FROM restarted);
DELETE FROM walpoints.volume_at_journal_start WHERE source_id IN (SELECT source_id FROM restarted);
DELETE FROM walpoints.referral_at_journal_start WHERE source_id IN (SELECT source_id FROM restarted);
DELETE FROM walpoints.open_position_at_journal_start
WHERE source_id IN (SELECT source_id FROM restarted);
DELETE FROM walpoints.pnl_paid_at_journal_start WHERE source_id IN (SELECT source_id FROM restarted);
INSERT INTO walpoints.volume_at_journal_start
SELECT * FROM walpoints.state_volume WHERE source_id IN (SELECT source_id FROM restarted);
INSERT INTO walpoints.referral_at_journal_start
SELECT * FROM walpoints.state_referral WHERE source_id IN (SELECT source_id FROM restarted);
INSERT INTO walpoints.open_position_at_journal_start
SELECT * FROM walpoints.state_open_position WHERE source_id IN (SELECT source_id FROM restarted);
INSERT INTO walpoints.pnl_paid_at_journal_start
SELECT * FROM walpoints.state_pnl_paid WHERE source_id IN (SELECT source_id FROM restarted);
DROP TABLE restarted;

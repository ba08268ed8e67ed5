-- Corrections and deletes look up a trade's latest award by its id. 0003 indexed
-- (source_id, trade_id, commit_lsn, ordinal): every fill then paid a second wide B-tree insert,
-- measured at about as much store time as its journal row (benches/store_floor/run.sh:
-- 1,000,000 fills' ledger_fill rows with the key and that index 5.1 s, with the key and an
-- index on trade_id alone 4.2 s, with the key only 3.2 s; README "Performance"). A trade id
-- has a handful of versions at most, so the lookup reads them by trade_id alone and picks the
-- source's latest; the narrower entry is cheaper to insert.
-- On a big store this rebuilds the index of every partition once, in the upgrade's transaction.
DROP INDEX walpoints.ledger_fill_by_trade;
CREATE INDEX ledger_fill_by_trade ON walpoints.ledger_fill (trade_id);

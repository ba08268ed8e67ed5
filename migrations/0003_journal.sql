-- The store keeps its inputs: a journal of every decoded input the rules consumed, and a
-- compact ledger (one row per change of a trade's award; one per holding or PnL entry) from
-- which the per-entry ledger of 0001 is a view. Both are partitioned by epoch, so a finished
-- epoch can be detached and archived (README, "Archiving an epoch").
--
-- A store made by 0001/0002 keeps what it has: its ledger becomes ledger_v1 (still part of the
-- view, so nothing the API or the totals show changes), its trade awards trade_award_v1 (read,
-- never written: corrections of trades awarded before the upgrade find them there), and a copy
-- of the rules engine's state as it stood, so `walpoints replay` can start where the journal
-- does (checkpoint.journal_from).

ALTER TABLE walpoints.ledger RENAME TO ledger_v1;
ALTER INDEX walpoints.ledger_pkey RENAME TO ledger_v1_pkey;
ALTER INDEX walpoints.ledger_by_user RENAME TO ledger_v1_by_user;
ALTER TABLE walpoints.trade_award RENAME TO trade_award_v1;
ALTER INDEX walpoints.trade_award_pkey RENAME TO trade_award_v1_pkey;

-- Where each source's journal begins: NULL = at setup (complete); otherwise the checkpoint
-- at the upgrade, with the rules engine's state of that moment in the *_at_journal_start tables.
ALTER TABLE walpoints.checkpoint ADD COLUMN journal_from pg_lsn;
UPDATE walpoints.checkpoint SET journal_from = lsn;
CREATE TABLE walpoints.volume_at_journal_start AS SELECT * FROM walpoints.state_volume;
CREATE TABLE walpoints.referral_at_journal_start AS SELECT * FROM walpoints.state_referral;
CREATE TABLE walpoints.open_position_at_journal_start AS SELECT * FROM walpoints.state_open_position;
CREATE TABLE walpoints.pnl_paid_at_journal_start AS SELECT * FROM walpoints.state_pnl_paid;

-- Every rules version ever in force, with the text it stands for. Rows refer to it by id.
CREATE TABLE walpoints.rules (
    rules_id   smallint PRIMARY KEY,
    version    text NOT NULL UNIQUE,    -- RuleSet::version, the hash of `canonical`
    canonical  text NOT NULL,           -- RuleSet::canonical_text, for people
    rules      text NOT NULL,           -- the RuleSet as JSON, what `replay` runs
    first_used timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE walpoints.input_kind AS ENUM (
    'trade_inserted', 'trade_updated', 'trade_deleted',
    'position_inserted', 'position_updated', 'position_deleted',
    'referral_inserted', 'referral_updated', 'referral_deleted',
    -- The old row of the update that follows it (REPLICA IDENTITY FULL, or a key change).
    'trade_old', 'position_old', 'referral_old',
    -- A source transaction that brought no input but moved stream time (a heartbeat, a
    -- transaction whose rows were all dead-lettered): it may settle holding hours.
    'tick'
);

-- Append-only, in commit order. (source_id, commit_lsn, ordinal) identifies an input forever;
-- epoch is that of the stream time when it arrived (-1 before genesis), so the partitions of
-- a past epoch never change again.
CREATE TABLE walpoints.journal (
    source_id    text COLLATE "C" NOT NULL,
    epoch        integer     NOT NULL,
    commit_lsn   pg_lsn      NOT NULL,
    ordinal      integer     NOT NULL,
    commit_time  timestamptz NOT NULL,
    rules_id     smallint    NOT NULL,
    input        walpoints.input_kind NOT NULL,
    -- The row's key: trade id, position id, or referee.
    id           text,
    symbol       text,
    -- trades
    price        numeric,
    amount       numeric,
    taker        text,
    maker        text,
    trade_time   timestamptz,   -- NULL: no time column (the commit time is used)
    -- positions
    user_address text,
    size         numeric,
    entry_price  numeric,
    is_open      boolean,
    realized_pnl numeric,
    -- referral_relations
    referrer     text,
    PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)
) PARTITION BY RANGE (epoch);

-- One row per change of a trade's award: the award written, or (reversal) the award a
-- correction or delete undid, with every party's points, multiplier and rate. Its entries in
-- the view are first_entry, first_entry + 1, ... in the order taker, taker's referrers, maker,
-- maker's referrers. A fill that earned nothing has a row too (notional NULL): a correction
-- that makes it eligible must find it.
CREATE TABLE walpoints.ledger_fill (
    source_id        text COLLATE "C" NOT NULL,
    epoch            integer     NOT NULL,   -- the fill's epoch (-1 before genesis)
    commit_lsn       pg_lsn      NOT NULL,
    ordinal          integer     NOT NULL,   -- among the transaction's award changes
    first_entry      integer     NOT NULL,
    trade_id         text COLLATE "C" NOT NULL,
    reversal         boolean     NOT NULL,
    fill_time        timestamptz NOT NULL,
    price            numeric     NOT NULL,
    amount           numeric     NOT NULL,
    taker            text COLLATE "C" NOT NULL,
    maker            text COLLATE "C" NOT NULL,
    notional         numeric,               -- volume added to both sides; NULL: not eligible
    taker_points     numeric(38,6),
    taker_multiplier numeric,
    taker_rate       numeric,
    maker_points     numeric(38,6),
    maker_multiplier numeric,
    maker_rate       numeric,
    taker_l1         text COLLATE "C",
    taker_l1_points  numeric(38,6),
    taker_l2         text COLLATE "C",
    taker_l2_points  numeric(38,6),
    maker_l1         text COLLATE "C",
    maker_l1_points  numeric(38,6),
    maker_l2         text COLLATE "C",
    maker_l2_points  numeric(38,6),
    level1_share     numeric,
    level2_share     numeric,
    event_time       timestamptz NOT NULL,   -- the fill's time, or the reversal's stream time
    commit_time      timestamptz NOT NULL,
    rules_id         smallint    NOT NULL,
    PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)
) PARTITION BY RANGE (epoch);
-- Corrections and deletes look up a trade's latest award.
CREATE INDEX ledger_fill_by_trade ON walpoints.ledger_fill (source_id, trade_id, commit_lsn, ordinal);

CREATE TYPE walpoints.position_entry AS ENUM ('holding', 'pnl');

-- Holding segments and PnL awards, one row per entry (multiplier 1, never reversed).
CREATE TABLE walpoints.ledger_position (
    source_id         text COLLATE "C" NOT NULL,
    epoch             integer     NOT NULL,
    commit_lsn        pg_lsn      NOT NULL,
    ordinal           integer     NOT NULL,
    kind              walpoints.position_entry NOT NULL,
    user_address      text COLLATE "C" NOT NULL,
    position_id       text COLLATE "C" NOT NULL,
    points            numeric(38,6) NOT NULL,
    basis             numeric     NOT NULL,
    rate              numeric     NOT NULL,
    position_notional numeric,
    segment_start     timestamptz,
    event_time        timestamptz NOT NULL,
    commit_time       timestamptz NOT NULL,
    rules_id          smallint    NOT NULL,
    PRIMARY KEY (source_id, epoch, commit_lsn, ordinal)
) PARTITION BY RANGE (epoch);

-- Which (user, epoch) has entries in which store batch, and at which commit LSNs: one row per
-- user and batch, not an index entry per ledger row, so the API finds a user's newest entries
-- by a few exact probes of the ledger's primary keys.
CREATE TABLE walpoints.user_batch (
    user_address text COLLATE "C" NOT NULL,
    epoch        integer  NOT NULL,
    source_id    text COLLATE "C" NOT NULL,
    first_lsn    pg_lsn   NOT NULL,   -- the batch's first commit LSN
    last_lsn     pg_lsn   NOT NULL,   -- its last
    commit_lsns  pg_lsn[] NOT NULL,   -- the user's entries' commit LSNs, ascending
    PRIMARY KEY (user_address, epoch, last_lsn, source_id)
);
-- A store upgraded from 0002: its ledger's entries get postings too.
INSERT INTO walpoints.user_batch
SELECT user_address, epoch, source_id, min(commit_lsn), max(commit_lsn),
       array_agg(DISTINCT commit_lsn ORDER BY commit_lsn)
FROM walpoints.ledger_v1 GROUP BY user_address, epoch, source_id;

-- Creates epoch e's partitions of the journal and the ledger if missing (-1: everything
-- before genesis). `run` creates the next epochs' ahead of time; a batch creates the one it
-- needs if the stream got there first (or a correction reaches an epoch long past).
CREATE FUNCTION walpoints.ensure_epoch_partitions(e integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t text;
    part text;
    bounds text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('walpoints.ensure_epoch_partitions'));
    IF e < 0 THEN
        bounds := 'FROM (MINVALUE) TO (0)';
    ELSE
        bounds := format('FROM (%s) TO (%s)', e, e + 1);
    END IF;
    FOREACH t IN ARRAY ARRAY['journal', 'ledger_fill', 'ledger_position'] LOOP
        part := CASE WHEN e < 0 THEN t || '_before_genesis' ELSE t || '_e' || lpad(e::text, 5, '0') END;
        IF to_regclass('walpoints.' || part) IS NULL THEN
            EXECUTE format('CREATE TABLE walpoints.%I PARTITION OF walpoints.%I FOR VALUES %s',
                           part, t, bounds);
        END IF;
    END LOOP;
END $$;

-- The per-entry ledger of 0001, as a view: what the API, `verify` and the totals are defined
-- over. Its columns and rows are those the old table would hold.
CREATE VIEW walpoints.ledger AS
SELECT source_id, commit_lsn, ordinal, user_address, epoch, kind, reversal, points, basis,
       multiplier, rate, position_notional, trade_id, position_id, referee, segment_start,
       event_time, commit_time, rules_version
FROM walpoints.ledger_v1
UNION ALL
SELECT f.source_id, f.commit_lsn, f.first_entry + e.k, e.user_address, f.epoch, e.kind,
       f.reversal,
       CASE WHEN f.reversal THEN -e.points ELSE e.points END,
       CASE WHEN f.reversal THEN -e.basis ELSE e.basis END,
       e.multiplier, e.rate, NULL::numeric, f.trade_id, NULL::text, e.referee,
       NULL::timestamptz, f.event_time, f.commit_time, r.version
FROM walpoints.ledger_fill f
JOIN walpoints.rules r ON r.rules_id = f.rules_id
CROSS JOIN LATERAL (
    SELECT (f.taker_l1 IS NOT NULL)::int AS t1, (f.taker_l2 IS NOT NULL)::int AS t2,
           (f.maker_l1 IS NOT NULL)::int AS m1
) n
CROSS JOIN LATERAL (VALUES
    (0, 'trading_taker', f.taker, f.taker_points, f.notional, f.taker_multiplier,
     f.taker_rate, NULL::text),
    (1, 'referral_l1', f.taker_l1, f.taker_l1_points, f.taker_points, 1::numeric,
     f.level1_share, f.taker),
    (1 + n.t1, 'referral_l2', f.taker_l2, f.taker_l2_points, f.taker_points, 1::numeric,
     f.level2_share, f.taker),
    (1 + n.t1 + n.t2, 'trading_maker', f.maker, f.maker_points, f.notional,
     f.maker_multiplier, f.maker_rate, NULL::text),
    (2 + n.t1 + n.t2, 'referral_l1', f.maker_l1, f.maker_l1_points, f.maker_points,
     1::numeric, f.level1_share, f.maker),
    (2 + n.t1 + n.t2 + n.m1, 'referral_l2', f.maker_l2, f.maker_l2_points, f.maker_points,
     1::numeric, f.level2_share, f.maker)
) e(k, kind, user_address, points, basis, multiplier, rate, referee)
WHERE e.points IS NOT NULL AND e.user_address IS NOT NULL
UNION ALL
SELECT p.source_id, p.commit_lsn, p.ordinal, p.user_address, p.epoch, p.kind::text, false,
       p.points, p.basis, 1::numeric, p.rate, p.position_notional, NULL::text, p.position_id,
       NULL::text, p.segment_start, p.event_time, p.commit_time, r.version
FROM walpoints.ledger_position p
JOIN walpoints.rules r ON r.rules_id = p.rules_id;

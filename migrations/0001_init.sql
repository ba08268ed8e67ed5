-- walpoints' store: the ledger, per-user epoch totals, the rules engine's state and the
-- checkpoint, all written in one transaction per batch so that they always agree.
-- Everything that belongs to one source (one exchange database and its slot) is keyed by
-- source_id, so several sources can share one store; user_epoch_points sums over all of them.
-- Key columns use the "C" collation: addresses and ids compare as bytes, which keeps index
-- maintenance cheap whatever the database's locale.

-- One row per source: where its stream stands, and what it was set up against.
CREATE TABLE walpoints.checkpoint (
    source_id        text COLLATE "C" PRIMARY KEY,
    slot_name        text COLLATE "C" NOT NULL,
    publication      text        NOT NULL,
    -- The source cluster's system identifier at setup: a different one means the LSNs below
    -- belong to another cluster.
    system_id        text        NOT NULL,
    -- The slot's consistent point: the snapshot holds everything committed before it.
    consistent_point pg_lsn      NOT NULL,
    snapshot_time    timestamptz NOT NULL,
    -- End LSN of the last source transaction whose effects are in this store.
    lsn              pg_lsn      NOT NULL,
    -- Commit time of that transaction (the snapshot's time until the first one).
    commit_time      timestamptz NOT NULL,
    -- The rules engine's stream time, µs since 1970 (max commit time seen).
    stream_time      bigint,
    transactions     bigint      NOT NULL DEFAULT 0,
    rules_version    text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Append-only: a correction is a new (negative) entry, never an edit. (source_id, commit_lsn,
-- ordinal) identifies an entry forever; the initial snapshot uses commit LSNs 0/1, 0/2, ...
CREATE TABLE walpoints.ledger (
    source_id         text COLLATE "C" NOT NULL,
    commit_lsn        pg_lsn      NOT NULL,
    ordinal           integer     NOT NULL,
    user_address      text COLLATE "C" NOT NULL,
    epoch             integer     NOT NULL,
    kind              text        NOT NULL,
    reversal          boolean     NOT NULL,
    -- Points are rounded to the micro-point by the rules, so numeric(38,6) stores them exactly.
    points            numeric(38,6) NOT NULL,
    basis             numeric     NOT NULL,
    multiplier        numeric     NOT NULL,
    rate              numeric     NOT NULL,
    position_notional numeric,
    trade_id          text,
    position_id       text,
    referee           text,
    segment_start     timestamptz,
    event_time        timestamptz NOT NULL,
    commit_time       timestamptz NOT NULL,
    rules_version     text        NOT NULL,
    PRIMARY KEY (source_id, commit_lsn, ordinal)
);
CREATE INDEX ledger_by_user ON walpoints.ledger (user_address, epoch, commit_lsn DESC, ordinal DESC);

-- Kept equal to the ledger's sums per (user, epoch), over all sources.
CREATE TABLE walpoints.user_epoch_points (
    user_address    text COLLATE "C" NOT NULL,
    epoch           integer NOT NULL,
    trading_points  numeric(38,6) NOT NULL DEFAULT 0,
    referral_points numeric(38,6) NOT NULL DEFAULT 0,
    holding_points  numeric(38,6) NOT NULL DEFAULT 0,
    pnl_points      numeric(38,6) NOT NULL DEFAULT 0,
    total_points    numeric(38,6) NOT NULL DEFAULT 0,
    trading_volume  numeric NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_address, epoch)
);
CREATE INDEX user_epoch_points_rank ON walpoints.user_epoch_points (epoch, total_points DESC);

-- The rules engine's state (see points::State), one table per kind of row.
CREATE TABLE walpoints.state_volume (
    source_id    text COLLATE "C" NOT NULL,
    user_address text COLLATE "C" NOT NULL,
    epoch        integer NOT NULL,
    volume       numeric NOT NULL,
    PRIMARY KEY (source_id, user_address, epoch)
);
CREATE TABLE walpoints.state_referral (
    source_id text COLLATE "C" NOT NULL,
    referee   text COLLATE "C" NOT NULL,
    referrer  text COLLATE "C" NOT NULL,
    PRIMARY KEY (source_id, referee)
);
CREATE TABLE walpoints.state_open_position (
    source_id    text COLLATE "C" NOT NULL,
    position_id  text COLLATE "C" NOT NULL,
    user_address text COLLATE "C" NOT NULL,
    notional     numeric NOT NULL,
    since        bigint  NOT NULL,
    PRIMARY KEY (source_id, position_id)
);
CREATE TABLE walpoints.state_pnl_paid (
    source_id   text COLLATE "C" NOT NULL,
    position_id text COLLATE "C" NOT NULL,
    PRIMARY KEY (source_id, position_id)
);
-- What each trade currently earns (points::Award as JSON), for corrections and deletes.
CREATE TABLE walpoints.trade_award (
    source_id text COLLATE "C" NOT NULL,
    trade_id  text COLLATE "C" NOT NULL,
    award     text  NOT NULL,   -- points::Award as JSON (text: never queried inside, cheaper to write)
    PRIMARY KEY (source_id, trade_id)
);

-- Rows that could not be used, with why; the stream went on without them.
CREATE TABLE walpoints.dead_letter (
    source_id   text COLLATE "C" NOT NULL,
    commit_lsn  pg_lsn      NOT NULL,
    seq         integer     NOT NULL,
    lsn         pg_lsn      NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL,
    row         jsonb       NOT NULL,
    at          timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, commit_lsn, seq)
);

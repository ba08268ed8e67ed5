-- The exchange's business tables as the original design describes them (trades, positions,
-- referral_relations), for demos and tests. walpoints never writes to these; it reads their
-- changes from the WAL. Column names match walpoints' default column mapping.

CREATE TABLE IF NOT EXISTS trades (
    id            bigserial PRIMARY KEY,
    symbol        text          NOT NULL,
    price         numeric(38,18) NOT NULL,
    amount        numeric(38,18) NOT NULL,   -- base quantity of the fill
    taker_address text          NOT NULL,
    maker_address text          NOT NULL,
    created_at    timestamptz   NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS positions (
    id           uuid          PRIMARY KEY DEFAULT gen_random_uuid(),
    user_address text          NOT NULL,
    symbol       text          NOT NULL,
    size         numeric(38,18) NOT NULL,   -- signed: negative is short
    entry_price  numeric(38,18) NOT NULL,
    status       text          NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    realized_pnl numeric(38,18),
    created_at   timestamptz   NOT NULL DEFAULT now(),
    updated_at   timestamptz   NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS positions_open ON positions (user_address) WHERE status = 'open';

CREATE TABLE IF NOT EXISTS referral_relations (
    referee_address  text        PRIMARY KEY,
    referrer_address text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

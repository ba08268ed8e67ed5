-- One million rows shaped like the drain's ledger_fill and journal rows (1,000,000 fills among
-- 10,000 users, two in three referred), written once to binary COPY files for run.sh. The journal's
-- input kind is text here (the store's is an enum of 4 bytes), so its figures are a little high.

DROP TABLE IF EXISTS lf, jr;
CREATE TABLE lf (
    source_id text COLLATE "C" NOT NULL, epoch integer NOT NULL, commit_lsn pg_lsn NOT NULL, ordinal integer NOT NULL,
    first_entry integer NOT NULL, trade_id text COLLATE "C" NOT NULL, reversal boolean NOT NULL, fill_time timestamptz NOT NULL,
    price numeric NOT NULL, amount numeric NOT NULL, taker text COLLATE "C" NOT NULL, maker text COLLATE "C" NOT NULL,
    notional numeric, taker_points numeric(38,6), taker_multiplier numeric, taker_rate numeric,
    maker_points numeric(38,6), maker_multiplier numeric, maker_rate numeric,
    taker_l1 text COLLATE "C", taker_l1_points numeric(38,6), taker_l2 text COLLATE "C", taker_l2_points numeric(38,6),
    maker_l1 text COLLATE "C", maker_l1_points numeric(38,6), maker_l2 text COLLATE "C", maker_l2_points numeric(38,6),
    level1_share numeric, level2_share numeric, event_time timestamptz NOT NULL, commit_time timestamptz NOT NULL, rules_id smallint NOT NULL);
CREATE TABLE jr (
    source_id text COLLATE "C" NOT NULL, epoch integer NOT NULL, commit_lsn pg_lsn NOT NULL, ordinal integer NOT NULL,
    commit_time timestamptz NOT NULL, rules_id smallint NOT NULL, input text NOT NULL, id text, symbol text,
    price numeric, amount numeric, taker text, maker text, trade_time timestamptz, user_address text, size numeric,
    entry_price numeric, is_open boolean, realized_pnl numeric, referrer text);
CREATE OR REPLACE FUNCTION addr(i bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT '0x' || lpad(to_hex(i * 2654435761 % 4294967296), 8, '0') || substr(md5(i::text), 1, 32) $$;
INSERT INTO lf SELECT 'bench', 3, ('0/' || to_hex(16777216 + (g/100)*40000))::pg_lsn, g % 100, 0, 't' || g, false,
  '2026-11-20'::timestamptz + g * interval '1 ms', (30000 + g % 1000)::numeric / 10, ((g % 97) + 1)::numeric / 100,
  addr(g % 10000), addr((g * 7 + 3) % 10000),
  round((30000 + g % 1000)::numeric / 10 * ((g % 97) + 1)::numeric / 100, 6),
  round((30000 + g % 1000)::numeric / 10 * ((g % 97) + 1)::numeric / 100 * 0.011, 6), 1.1, 0.01,
  round((30000 + g % 1000)::numeric / 10 * ((g % 97) + 1)::numeric / 100 * 0.0055, 6), 1.1, 0.005,
  CASE WHEN g % 3 > 0 THEN addr((g % 10000) / 3) END, CASE WHEN g % 3 > 0 THEN 1.234567 END,
  NULL, NULL,
  CASE WHEN (g*7+3) % 3 > 0 THEN addr(((g * 7 + 3) % 10000) / 3) END, CASE WHEN (g*7+3) % 3 > 0 THEN 0.617283 END,
  NULL, NULL, 0.1, 0.05,
  '2026-11-20'::timestamptz + g * interval '1 ms', '2026-11-20'::timestamptz + g * interval '1 ms', 1
FROM generate_series(1, 1000000) g;
INSERT INTO jr SELECT source_id, epoch, commit_lsn, ordinal, commit_time, 1, 'trade_inserted', trade_id, 'BTC-PERP', price, amount, taker, maker, fill_time, NULL, NULL, NULL, NULL, NULL, NULL FROM lf;
COPY lf TO '@DIR@/lf.bin' (FORMAT binary);
COPY jr TO '@DIR@/jr.bin' (FORMAT binary);
SELECT pg_size_pretty(pg_total_relation_size('lf')) lf, pg_size_pretty(pg_total_relation_size('jr')) jr;

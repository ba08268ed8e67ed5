-- The same fills in the candidate row designs run.sh compares: one combined row per fill,
-- points as int8 micro-points (c4), and addresses as int4 ids of a users table (c5).
DROP TABLE IF EXISTS c4, c5, users;
-- combined, compact numbers: points as int8 micro-points, multipliers and rates by tier index from the rules
CREATE TABLE c4 AS SELECT source_id, epoch, commit_lsn, ordinal, first_entry, trade_id, reversal, fill_time, 'BTC-PERP'::text symbol,
  price, amount, taker, maker, notional,
  (taker_points*1000000)::int8 taker_points, 1::smallint taker_tier, (maker_points*1000000)::int8 maker_points, 1::smallint maker_tier,
  taker_l1, (taker_l1_points*1000000)::int8 taker_l1_points, taker_l2, (taker_l2_points*1000000)::int8 taker_l2_points,
  maker_l1, (maker_l1_points*1000000)::int8 maker_l1_points, maker_l2, (maker_l2_points*1000000)::int8 maker_l2_points,
  event_time, commit_time, rules_id FROM lf;
CREATE TABLE users AS SELECT row_number() OVER ()::int4 id, a FROM (SELECT DISTINCT taker a FROM lf UNION SELECT maker FROM lf UNION SELECT taker_l1 FROM lf WHERE taker_l1 IS NOT NULL UNION SELECT maker_l1 FROM lf WHERE maker_l1 IS NOT NULL) s;
CREATE UNIQUE INDEX ON users(a);
CREATE TABLE c5 AS SELECT source_id, epoch, commit_lsn, ordinal, first_entry, trade_id, reversal, fill_time, symbol, price, amount,
  (SELECT id FROM users WHERE a = taker) taker, (SELECT id FROM users WHERE a = maker) maker, notional, taker_points, taker_tier, maker_points, maker_tier,
  (SELECT id FROM users WHERE a = taker_l1) taker_l1, taker_l1_points, (SELECT id FROM users WHERE a = taker_l2) taker_l2, taker_l2_points,
  (SELECT id FROM users WHERE a = maker_l1) maker_l1, maker_l1_points, (SELECT id FROM users WHERE a = maker_l2) maker_l2, maker_l2_points,
  event_time, commit_time, rules_id FROM c4;
COPY c4 TO '@DIR@/c4.bin' (FORMAT binary);
COPY c5 TO '@DIR@/c5.bin' (FORMAT binary);
-- combined row, numerics as today + symbol
COPY (SELECT lf.*, 'BTC-PERP'::text symbol FROM lf) TO '@DIR@/c2.bin' (FORMAT binary);
SELECT pg_size_pretty(pg_relation_size('c4')) c4, pg_size_pretty(pg_relation_size('c5')) c5, pg_size_pretty(pg_relation_size('lf')) lf;

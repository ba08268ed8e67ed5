-- A user's rank is 1 + the number of users of the epoch with more points. Counting them in
-- user_epoch_points_rank_cover reads one index entry per user ahead: 90-130 ms for the last of
-- 456,000 users. rank_bucket keeps, per epoch, how many users with a positive total fall in
-- each range of points, so a count reads at most a few thousand bucket rows plus the users of
-- one range. The batch that changes a total moves its user between buckets in the same
-- transaction (StoreTx::move_rank_buckets), so the counts are exact in every snapshot.
--
-- The ranges, on N = total_points in micro-points (an integer: the column's scale is 6):
-- N < 100 is range N (one micro-point wide); otherwise range 100 * digits(N) + the first two
-- digits of N, [d1d2 * 10^(digits - 2), (d1d2 + 1) * 10^(digits - 2)): 90 ranges a decade,
-- each 1-10 % wide, in the order of the points they hold.
CREATE FUNCTION walpoints.rank_bucket(points numeric) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN points <= 0 THEN NULL
        WHEN trunc(points * 1000000) < 100 THEN trunc(points * 1000000)::integer
        ELSE length(trunc(points * 1000000)::text) * 100
             + left(trunc(points * 1000000)::text, 2)::integer
    END
$$;

-- The lowest total of the range after `bucket` (bucket 0: the lowest positive total).
CREATE FUNCTION walpoints.rank_bucket_ceiling(bucket integer) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN bucket < 100 THEN (bucket + 1)::numeric / 1000000
        ELSE (bucket % 100 + 1)::numeric * 10::numeric ^ (bucket / 100 - 2) / 1000000
    END
$$;

CREATE TABLE walpoints.rank_bucket (
    epoch  integer NOT NULL,
    bucket integer NOT NULL,
    users  bigint  NOT NULL,
    PRIMARY KEY (epoch, bucket)
);

-- Recounts every bucket from user_epoch_points: at this upgrade, and after a source's share
-- is taken out of the totals by SQL (teardown of one of several sources).
CREATE FUNCTION walpoints.rebuild_rank_buckets() RETURNS void
LANGUAGE sql AS $$
    DELETE FROM walpoints.rank_bucket;
    INSERT INTO walpoints.rank_bucket (epoch, bucket, users)
    SELECT epoch, walpoints.rank_bucket(total_points), count(*)
    FROM walpoints.user_epoch_points WHERE total_points > 0
    GROUP BY 1, 2;
$$;

SELECT walpoints.rebuild_rank_buckets();

-- The number of users of `epoch` with a positive total above `points`, not counting the
-- addresses in `excluded`: the buckets above the one `points` falls in (bucket 0, below every
-- range, for points <= 0), the users of its own range above it, less the excluded users above
-- it (each an index lookup).
CREATE FUNCTION walpoints.users_ahead(epoch integer, points numeric, excluded text[])
RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT sum(b.users) FROM walpoints.rank_bucket b
                     WHERE b.epoch = users_ahead.epoch
                       AND b.bucket > coalesce(walpoints.rank_bucket(users_ahead.points), 0)),
                    0)::bigint
         + (SELECT count(*) FROM walpoints.user_epoch_points u
            WHERE u.epoch = users_ahead.epoch AND u.total_points > users_ahead.points
              AND u.total_points > 0
              AND u.total_points < walpoints.rank_bucket_ceiling(
                                     coalesce(walpoints.rank_bucket(users_ahead.points), 0)))
         - (SELECT count(*) FROM walpoints.user_epoch_points u
            WHERE u.epoch = users_ahead.epoch AND u.total_points > users_ahead.points
              AND u.total_points > 0 AND u.user_address = ANY(users_ahead.excluded))
$$;

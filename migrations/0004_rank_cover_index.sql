-- The points API ranks a user by counting the users ahead of them in the epoch, and pages the
-- leaderboard by (total_points DESC, user_address). With the address in the index, both are
-- index-only scans (no heap visit per user counted: the excluded-address filter and the
-- keyset's tie-break read the index), and the page's order is the index's, ties included.
-- It replaces user_epoch_points_rank (a prefix of it): still one index entry per total upsert,
-- once per (user, epoch) and store batch.
CREATE INDEX user_epoch_points_rank_cover
    ON walpoints.user_epoch_points (epoch, total_points DESC, user_address);
DROP INDEX walpoints.user_epoch_points_rank;

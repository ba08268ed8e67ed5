//! Rank buckets (`migrations/0006_rank_buckets.sql`): per epoch, how many users with a positive
//! total fall in each range of points, so that the API counts the users ahead of a rank from a
//! few thousand bucket rows instead of one index entry per user. The batch writer keeps them
//! (`StoreTx::move_rank_buckets`); `replay --verify` checks them against the totals it reads.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{Store, StoreError};

/// The rank bucket of a total, as the store's `walpoints.rank_bucket(numeric)` computes it
/// (`None` for a total that is not positive: those users are not ranked). On N, the total in
/// micro-points: N below 100 is bucket N; otherwise 100 × (digits of N) + its first two digits.
pub fn rank_bucket(points: Decimal) -> Option<i32> {
    if points <= Decimal::ZERO {
        return None;
    }
    let micro = points.checked_mul(Decimal::from(1_000_000))?.trunc();
    let n = micro.mantissa() / 10i128.pow(micro.scale());
    if n < 100 {
        return i32::try_from(n).ok();
    }
    let text = n.to_string();
    let lead: i32 = text.get(..2)?.parse().ok()?;
    Some(i32::try_from(text.len()).ok()? * 100 + lead)
}

impl Store {
    /// The stored rank buckets, (epoch, bucket) → users, of one epoch or of all.
    pub async fn rank_buckets(
        &self,
        epoch: Option<i32>,
    ) -> Result<BTreeMap<(i32, i32), i64>, StoreError> {
        let rows = self
            .client
            .query(
                "SELECT epoch, bucket, users FROM walpoints.rank_bucket \
                 WHERE $1::int IS NULL OR epoch = $1",
                &[&epoch],
            )
            .await
            .map_err(StoreError::db("read walpoints.rank_bucket"))?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(s: &str) -> Option<i32> {
        rank_bucket(s.parse().unwrap())
    }

    #[test]
    fn buckets_follow_the_points_in_order_with_ranges_a_few_percent_wide() {
        assert_eq!(bucket("0"), None);
        assert_eq!(bucket("-5"), None);
        assert_eq!(bucket("0.000001"), Some(1));
        assert_eq!(bucket("0.000099"), Some(99));
        assert_eq!(bucket("0.0001"), Some(310));
        assert_eq!(bucket("0.000109"), Some(310));
        assert_eq!(bucket("0.00011"), Some(311));
        assert_eq!(bucket("0.000999"), Some(399));
        assert_eq!(bucket("0.001"), Some(410));
        assert_eq!(bucket("1"), Some(710));
        assert_eq!(bucket("1.999999"), Some(719));
        assert_eq!(bucket("12345.678901"), Some(1112));
        // More than six decimals fall in the bucket of their micro-points (as SQL truncates).
        assert_eq!(bucket("0.0000019"), Some(1));
        let mut last = 0;
        for s in [
            "0.000001", "0.00005", "0.0002", "0.5", "3", "99.9", "100", "1e9",
        ] {
            let b = bucket(s).unwrap();
            assert!(b > last, "{s}: {b} after {last}");
            last = b;
        }
    }
}

//! The trading checks: per (user, epoch), the eligible volume and the number of eligible
//! fills, recomputed by SQL from the trades table and read from the store at the same cut.

use std::collections::{BTreeMap, BTreeSet};

use super::{sql_err, Difference, VerifyError, TRADING_KINDS};
use crate::config::Config;
use crate::identifier::quote_ident;
use crate::lsn::Lsn;
use crate::mapping::TableKind;

/// Trading activity of one (user, epoch): volume as exact decimal text, and fills.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Activity {
    volume: String,
    pub(super) fills: u64,
}

pub(super) type ByUserEpoch = BTreeMap<(String, u32), Activity>;

/// The parameters of the source's trading query.
pub(super) struct TradingQuery<'a> {
    pub(super) genesis: i64,
    pub(super) length: i64,
    pub(super) since: i64,
    pub(super) epoch: Option<u32>,
    pub(super) excluded: &'a [String],
    pub(super) min_notional: String,
}

/// Per (user, epoch): eligible volume and fills, recomputed from the trades table.
pub(super) async fn source_trading(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
    q: &TradingQuery<'_>,
) -> Result<ByUserEpoch, VerifyError> {
    let c = &config.columns;
    let table = config.tables.name_of(TableKind::Trades)?;
    let (id, price, amount, taker, maker, time) = (
        quote_ident(&c.trades_id),
        quote_ident(&c.trades_price),
        quote_ident(&c.trades_amount),
        quote_ident(&c.trades_taker),
        quote_ident(&c.trades_maker),
        quote_ident(&c.trades_time),
    );
    // Rows the daemon dead-letters (NULLs, NaN, a negative price) earn nothing: left out.
    let sql = format!(
        "WITH fills AS (
           SELECT lower({taker}::text) AS taker, lower({maker}::text) AS maker,
                  {price}::numeric * abs({amount}::numeric) AS notional,
                  floor((extract(epoch FROM {time}) * 1000000 - $1::int8) / $2::int8)::int8 AS epoch
           FROM {table}
           WHERE {time} >= 'epoch'::timestamptz + $3::int8 * interval '1 microsecond'
             AND {id} IS NOT NULL AND {price} IS NOT NULL AND {amount} IS NOT NULL
             AND {taker} IS NOT NULL AND {maker} IS NOT NULL
             AND {price}::numeric >= 0 AND {price}::numeric <> 'NaN'
             AND {amount}::numeric <> 'NaN')
         SELECT side.user_address, f.epoch, trim_scale(sum(f.notional))::text, count(*)
         FROM fills f CROSS JOIN LATERAL (VALUES (f.taker), (f.maker)) AS side(user_address)
         WHERE f.epoch >= 0 AND ($4::int8 IS NULL OR f.epoch = $4::int8)
           AND f.taker <> f.maker
           AND NOT (f.taker = ANY($5::text[])) AND NOT (f.maker = ANY($5::text[]))
           AND f.notional >= $6::text::numeric
         GROUP BY 1, 2"
    );
    let epoch = q.epoch.map(i64::from);
    let rows = tx
        .query(
            &sql,
            &[
                &q.genesis,
                &q.length,
                &q.since,
                &epoch,
                &q.excluded,
                &q.min_notional,
            ],
        )
        .await
        .map_err(sql_err(
            "source",
            "recompute trading volume from the trades table",
        ))?;
    let mut out = ByUserEpoch::new();
    for r in rows {
        let Ok(epoch) = u32::try_from(r.get::<_, i64>(1)) else {
            continue;
        };
        out.insert(
            (r.get(0), epoch),
            Activity {
                volume: r.get(2),
                fills: u64::try_from(r.get::<_, i64>(3)).unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Per (user, epoch): the store's volume (its `user_epoch_points`, less what other sources and
/// this source's commits after the cut added) and fills (this source's trading entries before
/// the cut, net of reversals).
pub(super) async fn store_trading(
    stx: &tokio_postgres::Transaction<'_>,
    source_id: &str,
    cut: Lsn,
    epoch: Option<u32>,
    sources: i64,
) -> Result<ByUserEpoch, VerifyError> {
    let cut_text = cut.to_string();
    let epoch = epoch.and_then(|e| i32::try_from(e).ok());
    let others = sources > 1;
    let volumes = stx
        .query(
            &format!(
                "WITH adj AS (
                   SELECT user_address, epoch, sum(basis) AS basis FROM (
                     SELECT user_address, epoch, basis FROM walpoints.ledger
                     WHERE source_id = $1 AND commit_lsn >= $2::text::pg_lsn
                       AND kind IN ({TRADING_KINDS})
                     UNION ALL
                     SELECT user_address, epoch, basis FROM walpoints.ledger
                     WHERE $4::bool AND source_id <> $1 AND kind IN ({TRADING_KINDS})
                   ) l
                   WHERE $3::int4 IS NULL OR epoch = $3::int4
                   GROUP BY 1, 2),
                 u AS (
                   SELECT user_address, epoch, trading_volume FROM walpoints.user_epoch_points
                   WHERE $3::int4 IS NULL OR epoch = $3::int4)
                 SELECT coalesce(u.user_address, adj.user_address)::text,
                        coalesce(u.epoch, adj.epoch),
                        trim_scale(coalesce(u.trading_volume, 0) - coalesce(adj.basis, 0))::text
                 FROM u FULL JOIN adj
                   ON adj.user_address = u.user_address AND adj.epoch = u.epoch"
            ),
            &[&source_id, &cut_text, &epoch, &others],
        )
        .await
        .map_err(sql_err("store", "read user_epoch_points"))?;
    let fills = stx
        .query(
            &format!(
                "SELECT user_address::text, epoch,
                        sum(CASE WHEN reversal THEN -1 ELSE 1 END)::int8
                 FROM walpoints.ledger
                 WHERE source_id = $1 AND commit_lsn < $2::text::pg_lsn
                   AND kind IN ({TRADING_KINDS}) AND ($3::int4 IS NULL OR epoch = $3::int4)
                 GROUP BY 1, 2"
            ),
            &[&source_id, &cut_text, &epoch],
        )
        .await
        .map_err(sql_err("store", "count the ledger's trading entries"))?;
    let mut out = ByUserEpoch::new();
    for r in volumes {
        let Ok(epoch) = u32::try_from(r.get::<_, i32>(1)) else {
            continue;
        };
        out.entry((r.get(0), epoch)).or_default().volume = r.get(2);
    }
    for r in fills {
        let Ok(epoch) = u32::try_from(r.get::<_, i32>(1)) else {
            continue;
        };
        // A negative net count cannot be a u64: it is a difference all the same.
        let net: i64 = r.get(2);
        let a = out.entry((r.get(0), epoch)).or_default();
        a.fills = u64::try_from(net).unwrap_or(u64::MAX);
    }
    Ok(out)
}

/// Both sides' trading activity, row by row; a row missing on one side counts as zero.
pub(super) fn compare_trading(source: &ByUserEpoch, store: &ByUserEpoch) -> Vec<Difference> {
    let zero = Activity {
        volume: "0".into(),
        fills: 0,
    };
    let keys: BTreeSet<&(String, u32)> = source.keys().chain(store.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let src = source.get(key).unwrap_or(&zero);
        let st = store.get(key).unwrap_or(&zero);
        let volume = |a: &Activity| {
            if a.volume.is_empty() {
                "0".to_owned()
            } else {
                a.volume.clone()
            }
        };
        let (sv, tv) = (volume(src), volume(st));
        if sv != tv {
            out.push(Difference {
                user: key.0.clone(),
                epoch: key.1,
                what: "trading volume".into(),
                store: tv,
                source: sv,
            });
        }
        if src.fills != st.fills {
            let show = |n: u64| {
                if n == u64::MAX {
                    "negative".to_owned()
                } else {
                    n.to_string()
                }
            };
            out.push(Difference {
                user: key.0.clone(),
                epoch: key.1,
                what: "eligible fills".into(),
                store: show(st.fills),
                source: show(src.fills),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(volume: &str, fills: u64) -> Activity {
        Activity {
            volume: volume.into(),
            fills,
        }
    }

    #[test]
    fn trading_rows_missing_on_one_side_count_as_zero() {
        let mut source = ByUserEpoch::new();
        source.insert(("0xa".into(), 3), act("150.5", 2));
        source.insert(("0xb".into(), 3), act("100", 1));
        let mut store = ByUserEpoch::new();
        store.insert(("0xa".into(), 3), act("150.5", 2));
        // Another shard's user: zero after taking the other sources out.
        store.insert(("0xc".into(), 3), act("0", 0));
        let diffs = compare_trading(&source, &store);
        assert_eq!(
            diffs,
            vec![
                Difference {
                    user: "0xb".into(),
                    epoch: 3,
                    what: "trading volume".into(),
                    store: "0".into(),
                    source: "100".into(),
                },
                Difference {
                    user: "0xb".into(),
                    epoch: 3,
                    what: "eligible fills".into(),
                    store: "0".into(),
                    source: "1".into(),
                },
            ]
        );
    }
}

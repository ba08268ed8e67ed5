//! The journal: every input the rules consumed, appended in commit order in the batch's own
//! transaction, so that `walpoints replay` can run the same engine over it without the source.
//!
//! One row per event (an update's old row, when the stream carried one, is a row of its own
//! just before it), and one `tick` row for a transaction that brought no event at all, since
//! it still moved stream time and may have settled holding hours. Rows are typed columns, as
//! migration 0003 describes; [`JournalReader`] turns them back into the engine's transactions.

use std::pin::Pin;

use futures_util::StreamExt;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{PgLsn, Type};

use super::{copy, ledger::lsn_param, Store, StoreError, StoreTx};
use crate::lsn::Lsn;
use crate::points::{Event, Position, PositionStatus, ReferralLink, Trade, TxEvents};
use crate::time::micros_of;

/// A transaction's inputs (or a run of them, for a transaction evaluated in chunks).
#[derive(Debug)]
pub struct JournalChunk {
    /// Commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// Its commit time, µs since 1970.
    pub commit_time: i64,
    /// Epoch of the stream time when it arrived; -1 before genesis.
    pub epoch: i32,
    /// Ordinal of the chunk's first row within the transaction.
    pub first_ordinal: u32,
    /// The events; empty for a tick.
    pub events: Vec<Event>,
}

impl JournalChunk {
    /// How many rows the chunk writes (a tick is one).
    pub fn rows(&self) -> u32 {
        let n: usize = self
            .events
            .iter()
            .map(|e| 1 + usize::from(has_old(e)))
            .sum();
        u32::try_from(n.max(1)).unwrap_or(u32::MAX)
    }
}

fn has_old(e: &Event) -> bool {
    matches!(
        e,
        Event::TradeUpdated { old: Some(_), .. }
            | Event::PositionUpdated { old: Some(_), .. }
            | Event::ReferralUpdated { old: Some(_), .. }
    )
}

const COLUMNS: &str = "source_id, epoch, commit_lsn, ordinal, commit_time, rules_id, input, id, \
     symbol, price, amount, taker, maker, trade_time, user_address, size, entry_price, is_open, \
     realized_pnl, referrer";

impl StoreTx<'_> {
    /// Appends journal rows (binary COPY).
    pub(super) async fn copy_journal(&self, chunks: &[JournalChunk]) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let rules_id = self.rules_id()?;
        let mut out = copy::Chunks::new();
        for c in chunks {
            let mut ordinal = c.first_ordinal;
            let mut put = |input: &str, fields: Fields<'_>| -> Result<(), StoreError> {
                let mut row = out.row(20);
                row.text(self.source_id);
                row.i32(c.epoch);
                row.i64(lsn_param(c.commit_lsn));
                row.i32(i32::try_from(ordinal).map_err(|_| {
                    StoreError::OutOfRange(format!("journal ordinal {ordinal} too big"))
                })?);
                row.timestamp(c.commit_time);
                row.i16(rules_id);
                row.text(input);
                fields.write(&mut row)?;
                out.flush_if_full();
                ordinal = ordinal.saturating_add(1);
                Ok(())
            };
            if c.events.is_empty() {
                put("tick", Fields::None)?;
            }
            for e in &c.events {
                match e {
                    Event::TradeInserted { new } => put("trade_inserted", Fields::Trade(new))?,
                    Event::TradeUpdated { old, new } => {
                        if let Some(o) = old {
                            put("trade_old", Fields::Trade(o))?;
                        }
                        put("trade_updated", Fields::Trade(new))?;
                    }
                    Event::TradeDeleted { id } => put("trade_deleted", Fields::Key(id))?,
                    Event::PositionInserted { new } => {
                        put("position_inserted", Fields::Position(new))?
                    }
                    Event::PositionUpdated { old, new } => {
                        if let Some(o) = old {
                            put("position_old", Fields::Position(o))?;
                        }
                        put("position_updated", Fields::Position(new))?;
                    }
                    Event::PositionDeleted { id } => put("position_deleted", Fields::Key(id))?,
                    Event::ReferralInserted { new } => {
                        put("referral_inserted", Fields::Referral(new))?
                    }
                    Event::ReferralUpdated { old, new } => {
                        if let Some(o) = old {
                            put("referral_old", Fields::Referral(o))?;
                        }
                        put("referral_updated", Fields::Referral(new))?;
                    }
                    Event::ReferralDeleted { referee, referrer } => put(
                        "referral_deleted",
                        Fields::Unlink(referee, referrer.as_deref()),
                    )?,
                }
            }
        }
        self.send_copy(
            &format!("COPY walpoints.journal ({COLUMNS}) FROM STDIN (FORMAT binary)"),
            "journal",
            out.finish(),
        )
        .await
    }
}

/// The typed columns of one row, after the fixed ones.
enum Fields<'a> {
    None,
    Key(&'a str),
    Trade(&'a Trade),
    Position(&'a Position),
    Referral(&'a ReferralLink),
    Unlink(&'a str, Option<&'a str>),
}

impl Fields<'_> {
    /// Writes id .. referrer (13 columns).
    fn write(&self, row: &mut copy::Row<'_>) -> Result<(), StoreError> {
        let nulls = |row: &mut copy::Row<'_>, n: usize| (0..n).for_each(|_| row.null());
        match self {
            Fields::None => nulls(row, 13),
            Fields::Key(id) => {
                row.text(id);
                nulls(row, 12);
            }
            Fields::Trade(t) => {
                row.text(&t.id);
                row.text(&t.symbol);
                row.numeric(&t.price)?;
                row.numeric(&t.amount)?;
                row.text(&t.taker);
                row.text(&t.maker);
                row.opt_timestamp(t.time);
                nulls(row, 6);
            }
            Fields::Position(p) => {
                row.text(&p.id);
                row.text(&p.symbol);
                nulls(row, 5);
                row.text(&p.user);
                row.numeric(&p.size)?;
                row.numeric(&p.entry_price)?;
                row.bool(p.status == PositionStatus::Open);
                row.opt_numeric(p.realized_pnl.as_ref())?;
                row.null();
            }
            Fields::Referral(r) => {
                row.text(&r.referee);
                nulls(row, 11);
                row.text(&r.referrer);
            }
            Fields::Unlink(referee, referrer) => {
                row.text(referee);
                nulls(row, 11);
                row.opt_text(*referrer);
            }
        }
        Ok(())
    }
}

/// Reads a source's journal back as the engine's transactions, in commit order, as a stream
/// (a season's journal does not fit in memory).
pub struct JournalReader {
    rows: Pin<Box<BinaryCopyOutStream>>,
    /// The first row of the next transaction, read ahead.
    next: Option<Raw>,
    done: bool,
}

/// One journal row as read.
struct Raw {
    commit_lsn: Lsn,
    commit_time: i64,
    rules_id: i16,
    input: String,
    event: Option<Event>,
}

/// One journaled transaction: what the engine is given, and under which rules.
#[derive(Debug)]
pub struct JournaledTx {
    /// The rules in force when it was applied.
    pub rules_id: i16,
    /// Its inputs.
    pub events: TxEvents,
}

impl Store {
    /// Streams this source's journal from after `after` (or from the start) up to and
    /// including `until`, in commit order.
    pub async fn read_journal(
        &self,
        after: Option<Lsn>,
        until: Lsn,
    ) -> Result<JournalReader, StoreError> {
        let after = after.map(|l| PgLsn::from(l.0));
        let stream = self
            .client
            .copy_out(&format!(
                "COPY (SELECT commit_lsn, commit_time, rules_id, input::text, id, symbol, price, \
                 amount, taker, maker, trade_time, user_address, size, entry_price, is_open, \
                 realized_pnl, referrer FROM walpoints.journal WHERE source_id = {} \
                 AND commit_lsn <= '{}' {} ORDER BY epoch, commit_lsn, ordinal) \
                 TO STDOUT (FORMAT binary)",
                crate::identifier::quote_literal(&self.source_id),
                until,
                after.map_or(String::new(), |a| format!("AND commit_lsn > '{a}'")),
            ))
            .await
            .map_err(StoreError::db("read the journal"))?;
        let types = [
            Type::PG_LSN,
            Type::TIMESTAMPTZ,
            Type::INT2,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
            Type::NUMERIC,
            Type::NUMERIC,
            Type::TEXT,
            Type::TEXT,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::NUMERIC,
            Type::NUMERIC,
            Type::BOOL,
            Type::NUMERIC,
            Type::TEXT,
        ];
        Ok(JournalReader {
            rows: Box::pin(BinaryCopyOutStream::new(stream, &types)),
            next: None,
            done: false,
        })
    }
}

impl JournalReader {
    /// The next transaction, `None` at the end.
    pub async fn next_tx(&mut self) -> Result<Option<JournaledTx>, StoreError> {
        let first = match self.next.take() {
            Some(r) => r,
            None => match self.read().await? {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        let mut tx = JournaledTx {
            rules_id: first.rules_id,
            events: TxEvents {
                commit_lsn: first.commit_lsn.0,
                commit_time: first.commit_time,
                events: Vec::new(),
            },
        };
        let mut old: Option<Event> = None;
        let mut row = Some(first);
        while let Some(r) = row {
            if r.commit_lsn.0 != tx.events.commit_lsn {
                self.next = Some(r);
                break;
            }
            if let Some(e) = r.event {
                if r.input.ends_with("_old") {
                    old = Some(e);
                } else {
                    tx.events.events.push(attach_old(e, old.take()));
                }
            }
            row = self.read().await?;
        }
        Ok(Some(tx))
    }

    async fn read(&mut self) -> Result<Option<Raw>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let Some(row) = self.rows.next().await else {
            self.done = true;
            return Ok(None);
        };
        let row = row.map_err(StoreError::db("read the journal"))?;
        let input: String = row.get(3);
        let text = |i: usize| row.get::<Option<String>>(i);
        let need_text = |i: usize, what: &str| {
            text(i).ok_or_else(|| StoreError::OutOfRange(format!("journal {input}: no {what}")))
        };
        let dec = |i: usize, what: &str| {
            row.get::<Option<rust_decimal::Decimal>>(i)
                .ok_or_else(|| StoreError::OutOfRange(format!("journal {input}: no {what}")))
        };
        let trade = || -> Result<Trade, StoreError> {
            Ok(Trade {
                id: need_text(4, "id")?,
                symbol: need_text(5, "symbol")?,
                price: dec(6, "price")?,
                amount: dec(7, "amount")?,
                taker: need_text(8, "taker")?,
                maker: need_text(9, "maker")?,
                time: row.get::<Option<std::time::SystemTime>>(10).map(micros_of),
            })
        };
        let position = || -> Result<Position, StoreError> {
            let open: Option<bool> = row.get(14);
            Ok(Position {
                id: need_text(4, "id")?,
                user: need_text(11, "user_address")?,
                symbol: need_text(5, "symbol")?,
                size: dec(12, "size")?,
                entry_price: dec(13, "entry_price")?,
                status: match open {
                    Some(true) => PositionStatus::Open,
                    Some(false) => PositionStatus::Closed,
                    None => {
                        return Err(StoreError::OutOfRange(
                            "journal position: no is_open".into(),
                        ))
                    }
                },
                realized_pnl: row.get(15),
            })
        };
        let link = || -> Result<ReferralLink, StoreError> {
            Ok(ReferralLink {
                referee: need_text(4, "id")?,
                referrer: need_text(16, "referrer")?,
            })
        };
        let event = match input.as_str() {
            "tick" => None,
            "trade_inserted" => Some(Event::TradeInserted { new: trade()? }),
            "trade_updated" | "trade_old" => Some(Event::TradeUpdated {
                old: None,
                new: trade()?,
            }),
            "trade_deleted" => Some(Event::TradeDeleted {
                id: need_text(4, "id")?,
            }),
            "position_inserted" => Some(Event::PositionInserted { new: position()? }),
            "position_updated" | "position_old" => Some(Event::PositionUpdated {
                old: None,
                new: position()?,
            }),
            "position_deleted" => Some(Event::PositionDeleted {
                id: need_text(4, "id")?,
            }),
            "referral_inserted" => Some(Event::ReferralInserted { new: link()? }),
            "referral_updated" | "referral_old" => Some(Event::ReferralUpdated {
                old: None,
                new: link()?,
            }),
            "referral_deleted" => Some(Event::ReferralDeleted {
                referee: need_text(4, "id")?,
                referrer: text(16),
            }),
            other => {
                return Err(StoreError::OutOfRange(format!(
                    "journal: unknown input {other}"
                )))
            }
        };
        let lsn: PgLsn = row.get(0);
        Ok(Some(Raw {
            commit_lsn: Lsn(u64::from(lsn)),
            commit_time: micros_of(row.get(1)),
            rules_id: row.get(2),
            input,
            event,
        }))
    }
}

/// An update with the old row the journal kept just before it.
fn attach_old(e: Event, old: Option<Event>) -> Event {
    match (e, old) {
        (Event::TradeUpdated { new, .. }, Some(Event::TradeUpdated { new: o, .. })) => {
            Event::TradeUpdated { old: Some(o), new }
        }
        (Event::PositionUpdated { new, .. }, Some(Event::PositionUpdated { new: o, .. })) => {
            Event::PositionUpdated { old: Some(o), new }
        }
        (Event::ReferralUpdated { new, .. }, Some(Event::ReferralUpdated { new: o, .. })) => {
            Event::ReferralUpdated { old: Some(o), new }
        }
        (e, _) => e,
    }
}

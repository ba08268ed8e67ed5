//! Fuzzes the pgoutput decoder and everything pure downstream of it: the relation cache, the
//! column mapping (rows → events or dead letters) and the rules engine.
//!
//! The input is read twice:
//! 1. as one message, the way the replication source hands each `XLogData` payload to
//!    [`pgoutput::decode`];
//! 2. as a stream of frames (`u16` big-endian length, then that many payload bytes), each
//!    decoded and fed through a [`RelationCache`], the default [`Mapper`] and an [`Engine`] with
//!    the default rules, committing the collected events at each Commit, the way the daemon
//!    does. Seeds are real pgoutput messages captured from PostgreSQL 15 (see
//!    `fuzz/README.md`), so the fuzzer starts from well-formed Relation/Insert/Update/Delete.
//!
//! The property is the decoder's and the mapping's promise: no input panics; bad input is a
//! typed error (whose message must render, too).
#![no_main]

use std::sync::Arc;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use walpoints::changes::{Op, RowChange};
use walpoints::mapping::{Columns, Tables};
use walpoints::mapping::{row_json, Mapped, Mapper};
use walpoints::lsn::Lsn;
use walpoints::pgoutput::{self, Message, OldTuple, RelationCache, TupleData};
use walpoints::points::{Engine, Event, MemoryAwardBook, RuleSet, State, TxEvents};
use walpoints::value::Value;

/// Built once: the mapping and engine are configuration, not input.
struct Fixture {
    mapper: Mapper,
    engine: Engine,
}

fn fixture() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(|| Fixture {
        mapper: Mapper::new(&Tables::default(), &Columns::default()),
        engine: Engine::new(RuleSet::default()).expect("the default rules compile"),
    })
}

fn split_old(old: Option<OldTuple>) -> (Option<TupleData>, Option<TupleData>) {
    match old {
        Some(OldTuple::Full(t)) => (Some(t), None),
        Some(OldTuple::Key(t)) => (None, Some(t)),
        None => (None, None),
    }
}

/// Converts every text value of `tuple` by its column's type, as `tail` and dead-letter
/// rendering do; errors are fine, panics are not.
fn convert_all(change: &RowChange) {
    for t in [&change.new, &change.old, &change.key]
        .into_iter()
        .flatten()
    {
        if let Ok(pairs) = change.relation.pair(t) {
            for (col, v) in pairs {
                if let pgoutput::ColumnValue::Text(b) = v {
                    if let Err(e) = Value::from_text(col.type_oid, b) {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // 1. The whole input as one message.
    let whole = Bytes::copy_from_slice(data);
    if let Err(e) = pgoutput::decode(&whole) {
        let _ = e.to_string();
    }

    // 2. The input as a framed stream through cache → mapping → engine.
    let f = fixture();
    let mut cache = RelationCache::new();
    let mut state = State::new();
    let mut book = MemoryAwardBook::new();
    let mut events: Vec<Event> = Vec::new();
    let mut commit_time = 0i64;
    let mut lsn = 0u64;
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        let payload = Bytes::copy_from_slice(&rest[2..end]);
        rest = &rest[end..];
        lsn += 1;
        let message = match pgoutput::decode(&payload) {
            Ok(m) => m,
            Err(e) => {
                let _ = e.to_string();
                continue;
            }
        };
        let relation = |cache: &RelationCache, oid| cache.get(oid).map(Arc::clone);
        let changes: Vec<RowChange> = match message {
            Message::Relation(r) => {
                if let Err(e) = f.mapper.check_relation(&r) {
                    let _ = e.to_string();
                }
                cache.update(r);
                continue;
            }
            Message::Begin(b) => {
                commit_time = walpoints::time::from_pg_micros(b.commit_time).unwrap_or(0);
                events.clear();
                continue;
            }
            Message::Commit(_) => {
                let tx = TxEvents {
                    commit_lsn: lsn,
                    commit_time,
                    events: std::mem::take(&mut events),
                };
                if let Ok(outcome) = f.engine.apply_transaction(&mut state, &mut book, &tx) {
                    for e in outcome.errors {
                        let _ = e.error.to_string();
                    }
                }
                continue;
            }
            Message::Insert(m) => match relation(&cache, m.relation_oid) {
                Ok(rel) => vec![RowChange {
                    lsn: Lsn(lsn),
                    relation: rel,
                    op: Op::Insert,
                    new: Some(m.new),
                    old: None,
                    key: None,
                }],
                Err(_) => continue,
            },
            Message::Update(m) => match relation(&cache, m.relation_oid) {
                Ok(rel) => {
                    let (old, key) = split_old(m.old);
                    vec![RowChange {
                        lsn: Lsn(lsn),
                        relation: rel,
                        op: Op::Update,
                        new: Some(m.new),
                        old,
                        key,
                    }]
                }
                Err(_) => continue,
            },
            Message::Delete(m) => match relation(&cache, m.relation_oid) {
                Ok(rel) => {
                    let (old, key) = split_old(Some(m.old));
                    vec![RowChange {
                        lsn: Lsn(lsn),
                        relation: rel,
                        op: Op::Delete,
                        new: None,
                        old,
                        key,
                    }]
                }
                Err(_) => continue,
            },
            Message::Truncate(m) => m
                .relation_oids
                .iter()
                .filter_map(|&oid| relation(&cache, oid).ok())
                .map(|rel| RowChange {
                    lsn: Lsn(lsn),
                    relation: rel,
                    op: Op::Truncate,
                    new: None,
                    old: None,
                    key: None,
                })
                .collect(),
            Message::Origin(_) | Message::Type(_) | Message::LogicalMessage(_) => continue,
        };
        for change in &changes {
            convert_all(change);
            let _ = row_json(change);
            match f.mapper.map(change) {
                Ok(Mapped::Event(e)) => events.push(e),
                Ok(Mapped::KeyMoved(a, b)) => events.extend([a, b]),
                Ok(Mapped::Truncate(_) | Mapped::Ignored) => {}
                Err(rejected) => {
                    let _ = rejected.to_string();
                }
            }
        }
    }
});

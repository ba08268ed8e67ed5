//! Criterion: the CPU walpoints spends per change before the rules see it, on one core.
//!
//! - `pgoutput/insert`: decoding pgoutput Insert messages of the seed schema's `trades` table
//!   (7 columns, 42-character addresses, numeric(38,18) price and amount, a timestamptz), as the
//!   walsender sends them;
//! - `pgoutput+mapping/insert`: the same plus joining the relation and mapping the row into a
//!   typed trade event (numerics and the timestamp parsed), i.e. everything between the socket
//!   and the engine.
//!
//! Throughput is reported in changes (elements) per second.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use walpoints::changes::{Op, RowChange};
use walpoints::lsn::Lsn;
use walpoints::mapping::{Columns, Tables};
use walpoints::mapping::{Mapped, Mapper};
use walpoints::pgoutput::{self, Column, Message, Relation, ReplicaIdentity};
use walpoints::value::oid;

const TRADES_OID: u32 = 16_390;
const BATCH: usize = 10_000;

fn trades_relation() -> Relation {
    let col = |name: &str, type_oid, key| Column {
        part_of_key: key,
        name: name.into(),
        type_oid,
        type_modifier: -1,
    };
    Relation {
        oid: TRADES_OID,
        namespace: "public".into(),
        name: "trades".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            col("id", oid::INT8, true),
            col("symbol", oid::TEXT, false),
            col("price", oid::NUMERIC, false),
            col("amount", oid::NUMERIC, false),
            col("taker_address", oid::TEXT, false),
            col("maker_address", oid::TEXT, false),
            col("created_at", oid::TIMESTAMPTZ, false),
        ],
    }
}

/// The Insert message the walsender sends for trade `i`, in text format.
fn insert_message(i: u64) -> Bytes {
    let values = [
        format!("{}", 1_000_000 + i),
        "BTC-PERP".to_owned(),
        format!("{}.250000000000000000", 1000 + i % 4000),
        format!("{}.{}00000000000000000", 1 + i % 5, i % 10),
        format!("0x{:040x}", 1 + (i * 7919) % 10_000),
        format!("0x{:040x}", 1 + (i * 104_729 + 3) % 10_000),
        format!(
            "2026-03-0{} 1{}:{:02}:{:02}.{:06}+00",
            1 + i % 9,
            i % 10,
            i % 60,
            (i / 60) % 60,
            i % 1_000_000
        ),
    ];
    let mut b = BytesMut::new();
    b.put_u8(b'I');
    b.put_u32(TRADES_OID);
    b.put_u8(b'N');
    b.put_i16(values.len() as i16);
    for v in &values {
        b.put_u8(b't');
        b.put_i32(v.len() as i32);
        b.put_slice(v.as_bytes());
    }
    b.freeze()
}

fn bench(c: &mut Criterion) {
    let messages: Vec<Bytes> = (0..BATCH as u64).map(insert_message).collect();
    let relation = Arc::new(trades_relation());
    let mapper = Mapper::new(&Tables::default(), &Columns::default());

    let mut g = c.benchmark_group("pgoutput");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("insert", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for m in &messages {
                if let Ok(Message::Insert(i)) = pgoutput::decode(m) {
                    n += i.new.len();
                }
            }
            n
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pgoutput+mapping");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("insert", |b| {
        b.iter_batched(
            || messages.clone(),
            |messages| {
                let mut events = Vec::with_capacity(messages.len());
                for (k, m) in messages.iter().enumerate() {
                    let Ok(Message::Insert(i)) = pgoutput::decode(m) else {
                        continue;
                    };
                    let change = RowChange {
                        lsn: Lsn(k as u64),
                        relation: relation.clone(),
                        op: Op::Insert,
                        new: Some(i.new),
                        old: None,
                        key: None,
                    };
                    if let Ok(Mapped::Event(e)) = mapper.map(&change) {
                        events.push(e);
                    }
                }
                events
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

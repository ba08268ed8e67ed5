//! Tests for the pgoutput decoder: a small test-only encoder for round trips, hand-written byte
//! fixtures for every error, and property tests that random, truncated and mutated input never
//! panics.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use super::*;
use crate::lsn::Lsn;

// ---------------------------------------------------------------------------------------------
// Test-only encoder: writes messages exactly as the protocol documentation lays them out.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn i16(&mut self, v: i16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn lsn(&mut self, v: Lsn) -> &mut Self {
        self.0.extend_from_slice(&v.0.to_be_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    fn tuple(&mut self, t: &TupleData) -> &mut Self {
        self.i16(i16::try_from(t.len()).unwrap());
        for c in &t.columns {
            match c {
                ColumnValue::Null => self.u8(b'n'),
                ColumnValue::UnchangedToast => self.u8(b'u'),
                ColumnValue::Text(b) => self.u8(b't').i32(b.len() as i32).raw(b),
                ColumnValue::Binary(b) => self.u8(b'b').i32(b.len() as i32).raw(b),
            };
        }
        self
    }
    fn old(&mut self, o: &OldTuple) -> &mut Self {
        match o {
            OldTuple::Key(t) => self.u8(b'K').tuple(t),
            OldTuple::Full(t) => self.u8(b'O').tuple(t),
        }
    }
    fn done(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.0))
    }
}

fn encode(m: &Message) -> Bytes {
    let mut e = Enc::default();
    e.u8(m.tag());
    match m {
        Message::Begin(b) => e.lsn(b.final_lsn).i64(b.commit_time).u32(b.xid),
        Message::Commit(c) => e
            .u8(c.flags)
            .lsn(c.commit_lsn)
            .lsn(c.end_lsn)
            .i64(c.commit_time),
        Message::Origin(o) => e.lsn(o.commit_lsn).str(&o.name),
        Message::Relation(r) => {
            e.u32(r.oid)
                .str(&r.namespace)
                .str(&r.name)
                .u8(r.replica_identity.as_byte())
                .i16(i16::try_from(r.columns.len()).unwrap());
            for c in &r.columns {
                e.u8(u8::from(c.part_of_key))
                    .str(&c.name)
                    .u32(c.type_oid)
                    .i32(c.type_modifier);
            }
            &mut e
        }
        Message::Type(t) => e.u32(t.oid).str(&t.namespace).str(&t.name),
        Message::Insert(i) => e.u32(i.relation_oid).u8(b'N').tuple(&i.new),
        Message::Update(u) => {
            e.u32(u.relation_oid);
            if let Some(o) = &u.old {
                e.old(o);
            }
            e.u8(b'N').tuple(&u.new)
        }
        Message::Delete(d) => e.u32(d.relation_oid).old(&d.old),
        Message::Truncate(t) => {
            e.i32(t.relation_oids.len() as i32).u8(t.options);
            for oid in &t.relation_oids {
                e.u32(*oid);
            }
            &mut e
        }
        Message::LogicalMessage(m) => e
            .u8(m.flags)
            .lsn(m.lsn)
            .str(&m.prefix)
            .i32(m.content.len() as i32)
            .raw(&m.content),
    };
    e.done()
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn arb_lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

/// Names without NUL (the protocol cannot carry one), including non-ASCII characters.
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_][a-z0-9_]{0,10}", "\\PC{0,6}"]
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn arb_column_value() -> impl Strategy<Value = ColumnValue> {
    prop_oneof![
        Just(ColumnValue::Null),
        Just(ColumnValue::UnchangedToast),
        arb_bytes().prop_map(ColumnValue::Text),
        arb_bytes().prop_map(ColumnValue::Binary),
    ]
}

fn arb_tuple(n: usize) -> impl Strategy<Value = TupleData> {
    vec(arb_column_value(), n).prop_map(|columns| TupleData { columns })
}

fn arb_old(n: usize) -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        arb_tuple(n).prop_map(OldTuple::Key),
        arb_tuple(n).prop_map(OldTuple::Full),
    ]
}

fn arb_replica_identity() -> impl Strategy<Value = ReplicaIdentity> {
    prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ]
}

fn arb_column() -> impl Strategy<Value = Column> {
    (any::<bool>(), arb_name(), any::<u32>(), any::<i32>()).prop_map(
        |(part_of_key, name, type_oid, type_modifier)| Column {
            part_of_key,
            name,
            type_oid,
            type_modifier,
        },
    )
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            Message::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), arb_lsn(), arb_lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| Message::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time
            })
        ),
        (arb_lsn(), arb_name())
            .prop_map(|(commit_lsn, name)| Message::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            arb_name(),
            arb_name(),
            arb_replica_identity(),
            vec(arb_column(), 0..6)
        )
            .prop_map(|(oid, namespace, name, replica_identity, columns)| {
                Message::Relation(Relation {
                    oid,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), arb_name(), arb_name()).prop_map(|(oid, namespace, name)| Message::Type(
            Type {
                oid,
                namespace,
                name
            }
        )),
        (any::<u32>(), (0..6usize).prop_flat_map(arb_tuple))
            .prop_map(|(relation_oid, new)| Message::Insert(Insert { relation_oid, new })),
        (
            any::<u32>(),
            (0..6usize).prop_flat_map(|n| (proptest::option::of(arb_old(n)), arb_tuple(n)))
        )
            .prop_map(|(relation_oid, (old, new))| Message::Update(Update {
                relation_oid,
                old,
                new
            })),
        (any::<u32>(), (0..6usize).prop_flat_map(arb_old))
            .prop_map(|(relation_oid, old)| Message::Delete(Delete { relation_oid, old })),
        (any::<u8>(), vec(any::<u32>(), 0..5)).prop_map(|(options, relation_oids)| {
            Message::Truncate(Truncate {
                options,
                relation_oids,
            })
        }),
        (any::<u8>(), arb_lsn(), arb_name(), arb_bytes()).prop_map(
            |(flags, lsn, prefix, content)| Message::LogicalMessage(LogicalMessage {
                flags,
                lsn,
                prefix,
                content
            })
        ),
    ]
}

/// Any input at all: decode must return, never panic. Returning the result lets callers assert
/// more where they know more.
fn decode_no_panic(bytes: &[u8]) -> Result<Message, DecodeError> {
    decode(&Bytes::copy_from_slice(bytes))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trips(m in arb_message()) {
        let bytes = encode(&m);
        prop_assert_eq!(decode(&bytes), Ok(m.clone()));
        prop_assert_eq!(Message::try_from(&bytes), Ok(m));
    }

    #[test]
    fn every_strict_prefix_is_an_error(m in arb_message()) {
        let bytes = encode(&m);
        for len in 0..bytes.len() {
            prop_assert!(decode(&bytes.slice(..len)).is_err(), "prefix {} of {:?} decoded", len, m);
        }
    }

    #[test]
    fn a_trailing_byte_is_an_error(m in arb_message(), extra in any::<u8>()) {
        let mut v = encode(&m).to_vec();
        let at = v.len();
        v.push(extra);
        let is_trailing = matches!(
            decode_no_panic(&v),
            Err(DecodeError::TrailingBytes { offset, count: 1, .. }) if offset == at
        );
        prop_assert!(is_trailing);
    }

    #[test]
    fn random_bytes_never_panic(
        tag in prop_oneof![Just(b'B'), Just(b'C'), Just(b'O'), Just(b'R'), Just(b'Y'),
                           Just(b'I'), Just(b'U'), Just(b'D'), Just(b'T'), Just(b'M'), any::<u8>()],
        tail in vec(any::<u8>(), 0..64),
    ) {
        let mut v = vec![tag];
        v.extend_from_slice(&tail);
        let _ = decode_no_panic(&v);
    }

    #[test]
    fn mutations_never_panic(
        m in arb_message(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut v = encode(&m).to_vec();
        for (at, byte) in edits {
            let i = at.index(v.len());
            v[i] = byte;
        }
        let _ = decode_no_panic(&v);
        // And a truncation of the mutated message.
        let len = cut.index(v.len() + 1);
        let _ = decode_no_panic(&v[..len]);
    }

    #[test]
    fn text_values_are_slices_of_the_input(n in 1..5usize, text in vec(any::<u8>(), 0..16)) {
        let tuple = TupleData { columns: vec![ColumnValue::Text(Bytes::from(text)); n] };
        let bytes = encode(&Message::Insert(Insert { relation_oid: 1, new: tuple }));
        let Ok(Message::Insert(ins)) = decode(&bytes) else { panic!("decode failed") };
        let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
        for c in &ins.new {
            let t = c.as_text().unwrap();
            prop_assert!(t.is_empty() || range.contains(&(t.as_ptr() as usize)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures: hand-assembled messages with known field values.
// ---------------------------------------------------------------------------------------------

fn relation_fixture() -> Relation {
    Relation {
        oid: 16_385,
        namespace: "public".into(),
        name: "trades".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                part_of_key: true,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            Column {
                part_of_key: false,
                name: "price".into(),
                type_oid: 1700,
                type_modifier: (38 << 16 | 18) + 4,
            },
        ],
    }
}

#[test]
fn decodes_begin_from_literal_bytes() {
    let bytes = Bytes::from_static(&[
        b'B', 0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, // final LSN 16/B374D848
        0, 0x02, 0xF0, 0x6E, 0x8D, 0x80, 0x2C, 0x00, // commit time
        0, 0, 0x02, 0x9A, // xid 666
    ]);
    let Ok(Message::Begin(b)) = decode(&bytes) else {
        panic!("not a Begin")
    };
    assert_eq!(b.final_lsn, "16/B374D848".parse().unwrap());
    assert_eq!(b.xid, 666);
    assert_eq!(b.commit_time, 0x0002_F06E_8D80_2C00);
    assert_eq!(
        b.commit_time_unix_micros(),
        Some(0x0002_F06E_8D80_2C00 + 946_684_800_000_000)
    );
}

#[test]
fn decodes_relation_and_insert() {
    let rel = relation_fixture();
    let bytes = encode(&Message::Relation(rel.clone()));
    // Byte-level check of the layout, independent of the encoder's own structure.
    let mut expected = vec![b'R', 0, 0, 0x40, 0x01];
    expected.extend_from_slice(b"public\0trades\0d\0\x02");
    expected.extend_from_slice(b"\x01id\0\0\0\0\x14\xff\xff\xff\xff");
    expected.extend_from_slice(b"\0price\0\0\0\x06\xa4\x00\x26\x00\x16");
    assert_eq!(bytes.as_ref(), expected.as_slice());
    assert_eq!(decode(&bytes), Ok(Message::Relation(rel.clone())));

    let insert = Bytes::from_static(b"I\0\0\x40\x01N\0\x02t\0\0\0\x0242t\0\0\0\x041.50");
    let Ok(Message::Insert(ins)) = decode(&insert) else {
        panic!("not an Insert")
    };
    assert_eq!(ins.relation_oid, 16_385);
    let mut cache = RelationCache::new();
    cache.update(rel);
    let pairs: Vec<_> = cache
        .pair(ins.relation_oid, &ins.new)
        .unwrap()
        .map(|(c, v)| (c.name.as_str(), v.as_text().cloned()))
        .collect();
    assert_eq!(
        pairs,
        vec![
            ("id", Some(Bytes::from_static(b"42"))),
            ("price", Some(Bytes::from_static(b"1.50")))
        ]
    );
}

#[test]
fn decodes_update_delete_truncate_message() {
    let upd = Bytes::from_static(b"U\0\0\0\x07K\0\x01t\0\0\0\x011N\0\x01u");
    assert_eq!(
        decode(&upd),
        Ok(Message::Update(Update {
            relation_oid: 7,
            old: Some(OldTuple::Key(TupleData {
                columns: vec![ColumnValue::Text(Bytes::from_static(b"1"))]
            })),
            new: TupleData {
                columns: vec![ColumnValue::UnchangedToast]
            },
        }))
    );
    let upd_no_old = Bytes::from_static(b"U\0\0\0\x07N\0\x01n");
    assert!(matches!(
        decode(&upd_no_old),
        Ok(Message::Update(Update { old: None, .. }))
    ));
    let del = Bytes::from_static(b"D\0\0\0\x07O\0\x01b\0\0\0\x02\xff\x00");
    assert_eq!(
        decode(&del),
        Ok(Message::Delete(Delete {
            relation_oid: 7,
            old: OldTuple::Full(TupleData {
                columns: vec![ColumnValue::Binary(Bytes::from_static(b"\xff\x00"))]
            })
        }))
    );
    let trunc = Bytes::from_static(b"T\0\0\0\x02\x03\0\0\0\x07\0\0\0\x08");
    let Ok(Message::Truncate(t)) = decode(&trunc) else {
        panic!("not a Truncate")
    };
    assert_eq!(t.relation_oids, vec![7, 8]);
    assert!(t.cascade() && t.restart_identity());
    let msg = Bytes::from_static(b"M\x01\0\0\0\0\0\0\0\x10walpoints\0\0\0\0\x02hi");
    let Ok(Message::LogicalMessage(m)) = decode(&msg) else {
        panic!("not a Message")
    };
    assert!(m.transactional());
    assert_eq!(m.lsn, Lsn(16));
    assert_eq!(m.prefix, "walpoints");
    assert_eq!(m.content, Bytes::from_static(b"hi"));
}

// ---------------------------------------------------------------------------------------------
// Each error variant, with its offset.
// ---------------------------------------------------------------------------------------------

fn err(bytes: &'static [u8]) -> DecodeError {
    decode(&Bytes::from_static(bytes)).unwrap_err()
}

#[test]
fn empty_and_unknown_tag() {
    assert_eq!(err(b""), DecodeError::Empty);
    assert_eq!(err(b"S\0\0"), DecodeError::UnknownTag { tag: b'S' });
    assert_eq!(
        err(b"\x00").to_string(),
        "unknown pgoutput message tag 0x00 at offset 0"
    );
}

#[test]
fn truncation_names_field_and_offset() {
    assert_eq!(
        err(b"B\0\0\0\0\0\0\0\x01\0\0"),
        DecodeError::Truncated {
            field: "Begin commit timestamp",
            offset: 9,
            needed: 8,
            available: 2
        }
    );
    assert_eq!(
        err(b"I\0\0\0\x01N\0\x01t\0\0\0\x05abc"),
        DecodeError::Truncated {
            field: "text column value",
            offset: 13,
            needed: 5,
            available: 3
        }
    );
}

#[test]
fn string_errors() {
    assert_eq!(
        err(b"O\0\0\0\0\0\0\0\0abc"),
        DecodeError::UnterminatedString {
            field: "Origin name",
            offset: 9
        }
    );
    assert_eq!(
        err(b"O\0\0\0\0\0\0\0\0ab\xffc\0"),
        DecodeError::InvalidUtf8 {
            field: "Origin name",
            offset: 11
        }
    );
}

#[test]
fn negative_lengths() {
    assert_eq!(
        err(b"I\0\0\0\x01N\xff\xff"),
        DecodeError::NegativeLength {
            field: "tuple column count",
            value: -1,
            offset: 6
        }
    );
    assert_eq!(
        err(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xfe"),
        DecodeError::NegativeLength {
            field: "text column length",
            value: -2,
            offset: 9
        }
    );
    assert!(matches!(
        err(b"T\x80\0\0\0\0"),
        DecodeError::NegativeLength {
            field: "Truncate relation count",
            offset: 1,
            ..
        }
    ));
    assert!(matches!(
        err(b"R\0\0\0\x01\0\0d\xff\xff"),
        DecodeError::NegativeLength {
            field: "Relation column count",
            offset: 8,
            ..
        }
    ));
    assert!(matches!(
        err(b"M\0\0\0\0\0\0\0\0\0p\0\xff\xff\xff\xff"),
        DecodeError::NegativeLength {
            field: "Message content length",
            offset: 12,
            ..
        }
    ));
}

#[test]
fn bad_replica_identity() {
    assert_eq!(
        err(b"R\0\0\0\x01public\0t\0x\0\0"),
        DecodeError::BadReplicaIdentity {
            value: b'x',
            offset: 14
        }
    );
}

#[test]
fn tuple_markers_and_kinds() {
    assert_eq!(
        err(b"I\0\0\0\x01K\0\0"),
        DecodeError::UnexpectedTupleMarker {
            message: "Insert",
            found: b'K',
            expected: "'N'",
            offset: 5
        }
    );
    assert!(matches!(
        err(b"U\0\0\0\x01X\0\0"),
        DecodeError::UnexpectedTupleMarker {
            message: "Update",
            found: b'X',
            ..
        }
    ));
    // An old tuple must be followed by 'N'.
    assert!(matches!(
        err(b"U\0\0\0\x01O\0\0O\0\0"),
        DecodeError::UnexpectedTupleMarker {
            found: b'O',
            expected: "'N'",
            offset: 8,
            ..
        }
    ));
    assert!(matches!(
        err(b"D\0\0\0\x01N\0\0"),
        DecodeError::UnexpectedTupleMarker {
            message: "Delete",
            found: b'N',
            ..
        }
    ));
    assert_eq!(
        err(b"I\0\0\0\x01N\0\x02nz"),
        DecodeError::UnknownColumnKind {
            kind: b'z',
            column: 1,
            offset: 9
        }
    );
}

#[test]
fn update_old_and_new_column_counts_must_agree() {
    assert_eq!(
        err(b"U\0\0\0\x01O\0\x02nnN\0\x01n"),
        DecodeError::ColumnCountMismatch {
            old: 2,
            new: 1,
            offset: 11
        }
    );
}

#[test]
fn trailing_bytes() {
    assert_eq!(
        err(b"C\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0!!"),
        DecodeError::TrailingBytes {
            message: "Commit",
            offset: 26,
            count: 2
        }
    );
}

#[test]
fn huge_counts_do_not_overallocate() {
    // Counts claim far more than the payload holds: must fail fast on truncation.
    assert!(matches!(
        err(b"T\x7f\xff\xff\xff\0"),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        err(b"I\0\0\0\x01N\x7f\xff"),
        DecodeError::Truncated { .. }
    ));
    assert!(matches!(
        err(b"I\0\0\0\x01N\0\x01t\x7f\xff\xff\xff"),
        DecodeError::Truncated { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Relation cache
// ---------------------------------------------------------------------------------------------

#[test]
fn relation_cache_replaces_and_reports_unknown() {
    let mut cache = RelationCache::new();
    assert!(cache.is_empty());
    assert_eq!(
        cache.get(1).unwrap_err(),
        RelationError::UnknownRelation { oid: 1 }
    );
    let rel = relation_fixture();
    assert!(cache.update(rel.clone()).is_none());
    let old = cache.get(rel.oid).unwrap().clone();

    // ALTER TABLE ... ADD COLUMN: a new Relation with the same oid replaces the old one.
    let mut altered = rel.clone();
    altered.columns.push(Column {
        part_of_key: false,
        name: "note".into(),
        type_oid: 25,
        type_modifier: -1,
    });
    let replaced = cache.update(altered.clone()).unwrap();
    assert_eq!(*replaced, rel);
    assert_eq!(**cache.get(rel.oid).unwrap(), altered);
    assert_eq!(cache.len(), 1);
    // A holder of the old Arc still sees the old columns.
    assert_eq!(old.columns.len(), 2);
    assert_eq!(altered.column_index("note"), Some(2));
    assert_eq!(altered.column_index("nope"), None);

    let two = TupleData {
        columns: vec![ColumnValue::Null, ColumnValue::Null],
    };
    let e = cache.pair(rel.oid, &two).err().unwrap();
    assert_eq!(
        e,
        RelationError::ColumnCountMismatch {
            oid: 16_385,
            schema: "public".into(),
            name: "trades".into(),
            expected: 3,
            actual: 2
        }
    );
    assert_eq!(
        e.to_string(),
        "tuple for relation public.trades (oid 16385) has 2 columns, the relation has 3"
    );
    assert_eq!(old.pair(&two).unwrap().len(), 2);
    assert!(matches!(
        cache.pair(99, &two).err(),
        Some(RelationError::UnknownRelation { oid: 99 })
    ));
}

#[test]
fn empty_namespace_means_pg_catalog() {
    let mut rel = relation_fixture();
    assert_eq!(rel.schema(), "public");
    rel.namespace.clear();
    assert_eq!(rel.schema(), "pg_catalog");
}

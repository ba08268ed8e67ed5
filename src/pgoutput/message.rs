//! One type per pgoutput (protocol version 1) message, with fields as the PostgreSQL
//! documentation defines them, and their decoding.
//!
//! Timestamps are kept as the raw `i64` the server sends: microseconds since the PostgreSQL
//! epoch 2000-01-01 00:00:00 UTC. Convert with [`crate::time::from_pg_micros`]
//! (or the `*_unix_micros` helpers) where Unix time is needed; keeping the raw value means the
//! decoder cannot fail on, or distort, an out-of-range timestamp.

use bytes::Bytes;

use super::tuple::decode_tuple;
use super::{DecodeError, Reader, TupleData};
use crate::lsn::Lsn;
use crate::time::from_pg_micros;

/// A decoded pgoutput message, one variant per message tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `'B'`: a transaction starts.
    Begin(Begin),
    /// `'C'`: the transaction ends.
    Commit(Commit),
    /// `'O'`: the transaction was replicated from another origin.
    Origin(Origin),
    /// `'R'`: the schema of a relation that following row messages refer to.
    Relation(Relation),
    /// `'Y'`: the name of a non-built-in data type used by a following Relation.
    Type(Type),
    /// `'I'`: a row was inserted.
    Insert(Insert),
    /// `'U'`: a row was updated.
    Update(Update),
    /// `'D'`: a row was deleted.
    Delete(Delete),
    /// `'T'`: one or more relations were truncated.
    Truncate(Truncate),
    /// `'M'`: a logical decoding message written with `pg_logical_emit_message`.
    LogicalMessage(LogicalMessage),
}

impl Message {
    /// The wire tag of this message, for logs and metrics that count message kinds.
    pub fn tag(&self) -> u8 {
        match self {
            Message::Begin(_) => b'B',
            Message::Commit(_) => b'C',
            Message::Origin(_) => b'O',
            Message::Relation(_) => b'R',
            Message::Type(_) => b'Y',
            Message::Insert(_) => b'I',
            Message::Update(_) => b'U',
            Message::Delete(_) => b'D',
            Message::Truncate(_) => b'T',
            Message::LogicalMessage(_) => b'M',
        }
    }
}

/// Begin (`'B'`): the start of a transaction's changes. Changes are sent only for committed
/// transactions, so the final LSN and commit time are already known here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// The final LSN of the transaction (its commit record's LSN).
    pub final_lsn: Lsn,
    /// Commit timestamp, µs since 2000-01-01 UTC (the PostgreSQL epoch).
    pub commit_time: i64,
    /// Xid of the transaction.
    pub xid: u32,
}

impl Begin {
    /// The commit timestamp as µs since the Unix epoch; `None` only on overflow.
    pub fn commit_time_unix_micros(&self) -> Option<i64> {
        from_pg_micros(self.commit_time)
    }
}

/// Commit (`'C'`): the end of a transaction; its end LSN is what a consumer acknowledges once
/// the transaction's effects are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently unused by PostgreSQL (sent as 0). Kept raw rather than rejected so a
    /// future server setting a bit does not stop the stream.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end LSN of the transaction: the position just past its commit record.
    pub end_lsn: Lsn,
    /// Commit timestamp, µs since 2000-01-01 UTC (the PostgreSQL epoch).
    pub commit_time: i64,
}

impl Commit {
    /// The commit timestamp as µs since the Unix epoch; `None` only on overflow.
    pub fn commit_time_unix_micros(&self) -> Option<i64> {
        from_pg_micros(self.commit_time)
    }
}

/// Origin (`'O'`): the transaction was originally committed on another node (bidirectional
/// replication setups). There can be several in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The LSN of the commit on the origin server.
    pub commit_lsn: Lsn,
    /// Name of the origin.
    pub name: String,
}

/// How a relation identifies the old row in Update and Delete messages (`relreplident` in
/// `pg_class`); it decides whether old values arrive as a key (`K`), a full row (`O`) or not at
/// all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key columns (REPLICA IDENTITY DEFAULT).
    Default,
    /// `'n'`: nothing; updates and deletes carry no old values (REPLICA IDENTITY NOTHING).
    Nothing,
    /// `'f'`: all columns (REPLICA IDENTITY FULL).
    Full,
    /// `'i'`: the columns of a chosen unique index (REPLICA IDENTITY USING INDEX).
    Index,
}

impl ReplicaIdentity {
    /// Maps the `relreplident` byte; `None` for anything else.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }

    /// The `relreplident` byte, as sent on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// One column of a [`Relation`] (generated columns are never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity key (flag bit 1). Other flag bits are
    /// undefined in protocol version 1 and ignored.
    pub part_of_key: bool,
    /// Name of the column.
    pub name: String,
    /// Oid of the column's data type; decides how its text value is converted
    /// (see [`crate::value::oid`]).
    pub type_oid: u32,
    /// Type modifier of the column (`atttypmod`), e.g. precision and scale of `numeric(p,s)`;
    /// -1 when none.
    pub type_modifier: i32,
}

/// Relation (`'R'`): the schema of a table, sent before the first change to it in a session and
/// again whenever it changes (e.g. after `ALTER TABLE ... ADD COLUMN`), so row messages can be
/// read positionally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Oid of the relation; row messages refer to it.
    pub oid: u32,
    /// Namespace (schema) as sent; the empty string means `pg_catalog`
    /// (see [`Relation::schema`]).
    pub namespace: String,
    /// Relation (table) name.
    pub name: String,
    /// Replica identity setting of the relation.
    pub replica_identity: ReplicaIdentity,
    /// The columns, in the order tuple values arrive.
    pub columns: Vec<Column>,
}

/// Type (`'Y'`): names a data type that is not built in, so its oid in a following Relation can
/// be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// Oid of the data type.
    pub oid: u32,
    /// Namespace; the empty string means `pg_catalog`.
    pub namespace: String,
    /// Name of the data type.
    pub name: String,
}

/// Insert (`'I'`): a new row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// Oid of the relation, announced by an earlier Relation message.
    pub relation_oid: u32,
    /// The new row (marker `'N'`).
    pub new: TupleData,
}

/// The old row image of an Update or Delete; which kind arrives depends on the relation's
/// replica identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: only the replica identity key columns carry values; the other columns are NULL.
    Key(TupleData),
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// Update (`'U'`): a changed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// Oid of the relation, announced by an earlier Relation message.
    pub relation_oid: u32,
    /// The old row: present under REPLICA IDENTITY FULL (`'O'`), or as a key (`'K'`) when the
    /// update changed a key column; absent otherwise.
    pub old: Option<OldTuple>,
    /// The new row (marker `'N'`). Columns the update did not touch that are TOASTed arrive as
    /// [`ColumnValue::UnchangedToast`](super::ColumnValue::UnchangedToast).
    pub new: TupleData,
}

/// Delete (`'D'`): a removed row. Under REPLICA IDENTITY NOTHING no Delete is sent at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// Oid of the relation, announced by an earlier Relation message.
    pub relation_oid: u32,
    /// The old row: its key (`'K'`) or, under REPLICA IDENTITY FULL, the whole row (`'O'`).
    pub old: OldTuple,
}

/// Truncate (`'T'`): the listed relations were emptied in one statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits: 1 = CASCADE, 2 = RESTART IDENTITY.
    pub options: u8,
    /// Oids of the truncated relations.
    pub relation_oids: Vec<u32>,
}

impl Truncate {
    /// Whether `TRUNCATE ... CASCADE` was used, i.e. dependent tables were truncated too.
    pub fn cascade(&self) -> bool {
        self.options & 1 != 0
    }

    /// Whether `TRUNCATE ... RESTART IDENTITY` was used.
    pub fn restart_identity(&self) -> bool {
        self.options & 2 != 0
    }
}

/// Message (`'M'`): a logical decoding message from `pg_logical_emit_message`; sent only when
/// the subscriber asked for `messages true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Flags: bit 1 means the message is transactional (delivered inside its transaction,
    /// only if it commits); otherwise it was emitted immediately.
    pub flags: u8,
    /// The LSN of the logical decoding message.
    pub lsn: Lsn,
    /// The prefix the emitter chose, used to tell message kinds apart.
    pub prefix: String,
    /// The content, as a zero-copy slice of the payload.
    pub content: Bytes,
}

impl LogicalMessage {
    /// Whether the message is transactional (flag bit 1).
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// Dispatches on the tag byte and decodes the body; the whole payload must be consumed.
pub(super) fn decode_message(data: &Bytes) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data);
    let tag = match data.first() {
        Some(&tag) => tag,
        None => return Err(DecodeError::Empty),
    };
    r.u8("message tag")?;
    let (message, name) = match tag {
        b'B' => (Message::Begin(decode_begin(&mut r)?), "Begin"),
        b'C' => (Message::Commit(decode_commit(&mut r)?), "Commit"),
        b'O' => (Message::Origin(decode_origin(&mut r)?), "Origin"),
        b'R' => (Message::Relation(decode_relation(&mut r)?), "Relation"),
        b'Y' => (Message::Type(decode_type(&mut r)?), "Type"),
        b'I' => (Message::Insert(decode_insert(&mut r)?), "Insert"),
        b'U' => (Message::Update(decode_update(&mut r)?), "Update"),
        b'D' => (Message::Delete(decode_delete(&mut r)?), "Delete"),
        b'T' => (Message::Truncate(decode_truncate(&mut r)?), "Truncate"),
        b'M' => (
            Message::LogicalMessage(decode_logical_message(&mut r)?),
            "Message",
        ),
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish(name)?;
    Ok(message)
}

fn decode_begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("Begin final LSN")?,
        commit_time: r.i64("Begin commit timestamp")?,
        xid: r.u32("Begin xid")?,
    })
}

fn decode_commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("Commit flags")?,
        commit_lsn: r.lsn("Commit LSN")?,
        end_lsn: r.lsn("Commit end LSN")?,
        commit_time: r.i64("Commit timestamp")?,
    })
}

fn decode_origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn("Origin commit LSN")?,
        name: r.string("Origin name")?,
    })
}

fn decode_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("Relation oid")?;
    let namespace = r.string("Relation namespace")?;
    let name = r.string("Relation name")?;
    let offset = r.offset();
    let value = r.u8("Relation replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(value)
        .ok_or(DecodeError::BadReplicaIdentity { value, offset })?;
    let count = r.count16("Relation column count")?;
    // A column takes at least 10 bytes (flags, empty name, oid, typmod).
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("Relation column flags")?;
        columns.push(Column {
            part_of_key: flags & 1 != 0,
            name: r.string("Relation column name")?,
            type_oid: r.u32("Relation column type oid")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_type(r: &mut Reader<'_>) -> Result<Type, DecodeError> {
    Ok(Type {
        oid: r.u32("Type oid")?,
        namespace: r.string("Type namespace")?,
        name: r.string("Type name")?,
    })
}

/// Reads a tuple marker byte and checks it is one of `allowed`.
fn marker(
    r: &mut Reader<'_>,
    message: &'static str,
    allowed: &[u8],
    expected: &'static str,
) -> Result<u8, DecodeError> {
    let offset = r.offset();
    let found = r.u8("tuple marker")?;
    if allowed.contains(&found) {
        Ok(found)
    } else {
        Err(DecodeError::UnexpectedTupleMarker {
            message,
            found,
            expected,
            offset,
        })
    }
}

fn decode_insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_oid = r.u32("Insert relation oid")?;
    marker(r, "Insert", b"N", "'N'")?;
    Ok(Insert {
        relation_oid,
        new: decode_tuple(r)?,
    })
}

fn decode_update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_oid = r.u32("Update relation oid")?;
    let old = match marker(r, "Update", b"KON", "'K', 'O' or 'N'")? {
        b'K' => Some(OldTuple::Key(decode_tuple(r)?)),
        b'O' => Some(OldTuple::Full(decode_tuple(r)?)),
        _ => None,
    };
    if old.is_some() {
        marker(r, "Update", b"N", "'N'")?;
    }
    let offset = r.offset();
    let new = decode_tuple(r)?;
    if let Some(old) = &old {
        if old.tuple().len() != new.len() {
            return Err(DecodeError::ColumnCountMismatch {
                old: old.tuple().len(),
                new: new.len(),
                offset,
            });
        }
    }
    Ok(Update {
        relation_oid,
        old,
        new,
    })
}

fn decode_delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_oid = r.u32("Delete relation oid")?;
    let old = match marker(r, "Delete", b"KO", "'K' or 'O'")? {
        b'K' => OldTuple::Key(decode_tuple(r)?),
        _ => OldTuple::Full(decode_tuple(r)?),
    };
    Ok(Delete { relation_oid, old })
}

fn decode_truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.count32("Truncate relation count")?;
    let options = r.u8("Truncate options")?;
    let mut relation_oids = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relation_oids.push(r.u32("Truncate relation oid")?);
    }
    Ok(Truncate {
        options,
        relation_oids,
    })
}

fn decode_logical_message(r: &mut Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    let flags = r.u8("Message flags")?;
    let lsn = r.lsn("Message LSN")?;
    let prefix = r.string("Message prefix")?;
    let len = r.count32("Message content length")?;
    Ok(LogicalMessage {
        flags,
        lsn,
        prefix,
        content: r.bytes(len, "Message content")?,
    })
}

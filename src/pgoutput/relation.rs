//! The relation cache: what row messages need in order to be read, since they carry only an
//! oid and positional values.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Column, ColumnValue, Relation, TupleData};

/// Why a row message could not be matched with its relation's schema. Either means the stream
/// is inconsistent with what the decoder was told (a missed Relation message), so it is
/// definite for the stream, not for the row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelationError {
    /// A row message named an oid for which no Relation message has been seen.
    #[error("no Relation message seen for relation oid {oid}")]
    UnknownRelation {
        /// The oid looked up.
        oid: u32,
    },
    /// A tuple's column count differs from its relation's.
    #[error(
        "tuple for relation {schema}.{name} (oid {oid}) has {actual} columns, \
         the relation has {expected}"
    )]
    ColumnCountMismatch {
        /// The relation oid.
        oid: u32,
        /// The relation's schema.
        schema: String,
        /// The relation's name.
        name: String,
        /// Columns in the relation.
        expected: usize,
        /// Columns in the tuple.
        actual: usize,
    },
}

impl Relation {
    /// The schema name, with the protocol's empty-string shorthand resolved to `pg_catalog`, so
    /// configuration can name tables the way SQL does.
    pub fn schema(&self) -> &str {
        if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        }
    }

    /// The position of the named column, so a mapping can resolve names once per Relation
    /// message and then index tuples directly.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Pairs each value of `tuple` with its column, after checking the counts agree, so values
    /// can never be attributed to the wrong column.
    pub fn pair<'a>(
        &'a self,
        tuple: &'a TupleData,
    ) -> Result<impl ExactSizeIterator<Item = (&'a Column, &'a ColumnValue)> + 'a, RelationError>
    {
        if tuple.len() != self.columns.len() {
            return Err(RelationError::ColumnCountMismatch {
                oid: self.oid,
                schema: self.schema().to_owned(),
                name: self.name.clone(),
                expected: self.columns.len(),
                actual: tuple.len(),
            });
        }
        Ok(self.columns.iter().zip(tuple.columns.iter()))
    }
}

/// Maps relation oid to the latest [`Relation`] announced for it.
///
/// Relations are stored behind [`Arc`] so a decoded change can keep the schema it was decoded
/// with cheaply: when a later Relation message replaces an entry (how `ALTER TABLE ... ADD
/// COLUMN` shows up mid-stream), changes already decoded keep the old column list and later
/// ones get the new one.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    /// An empty cache, as at the start of a replication session (the server re-sends every
    /// Relation before first use in each session).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Relation message, replacing any earlier one with the same oid; returns the
    /// replaced entry so the caller can notice schema changes.
    pub fn update(&mut self, relation: Relation) -> Option<Arc<Relation>> {
        self.relations.insert(relation.oid, Arc::new(relation))
    }

    /// The relation for `oid`, or a typed error if the stream never announced it.
    pub fn get(&self, oid: u32) -> Result<&Arc<Relation>, RelationError> {
        self.relations
            .get(&oid)
            .ok_or(RelationError::UnknownRelation { oid })
    }

    /// Looks up `oid` and pairs `tuple` with its columns (see [`Relation::pair`]).
    pub fn pair<'a>(
        &'a self,
        oid: u32,
        tuple: &'a TupleData,
    ) -> Result<impl ExactSizeIterator<Item = (&'a Column, &'a ColumnValue)> + 'a, RelationError>
    {
        self.get(oid)?.pair(tuple)
    }

    /// Number of relations known, for diagnostics.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation has been announced yet.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

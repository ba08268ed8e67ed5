//! The engine's persistent state: a plain value the daemon saves with its
//! checkpoint and loads on restart.
//!
//! Memory: with a million users and a million open positions in mind,
//! addresses are interned once (back to back in one string) and every
//! map keys on a 4-byte id. The ids are private and never reach the output
//! or the serialized form (which uses addresses), so a state rebuilt in any
//! order behaves identically.
//!
//! Deltas: with change tracking on, the state records which keys changed, and
//! [`State::drain_delta`] hands them over as rows keyed by address, so the
//! daemon can persist only what changed in a batch; loading is applying one
//! big delta ([`State::apply_delta`]) to an empty state.

use std::collections::BTreeSet;
use std::hash::Hasher;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::epoch::EpochId;
use super::error::EventError;
use super::serde_dec::dec;

/// Private handle of an interned address.
pub(crate) type UserId = u32;

/// A fixed, word-at-a-time multiplicative hash of a name: fast for 42-character addresses,
/// and seedless, so nothing in the engine depends on randomness.
#[derive(Debug, Clone, Copy, Default)]
pub struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0 ^ bytes.len() as u64;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(K);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A hash map under [`NameHasher`]: the state's per-user maps (hundreds of thousands of users
/// over a season) are looked up several times per fill, and a B-tree's dozen comparisons,
/// each a cache miss, were a third of `replay`'s engine time (perf, 20,000,000 fills). Nothing
/// depends on their order: dumps sort ([`State::to_delta`]).
pub type FastMap<K, V> = hashbrown::HashMap<K, V, std::hash::BuildHasherDefault<NameHasher>>;

/// A hash set under [`NameHasher`], for the same reason as [`FastMap`].
type FastSet<K> = hashbrown::HashSet<K, std::hash::BuildHasherDefault<NameHasher>>;

fn hash_name(name: &str) -> u64 {
    let mut h = NameHasher::default();
    h.write(name.as_bytes());
    h.finish()
}

/// Addresses, each stored once, back to back in chunks of [`NAME_CHUNK`] bytes (address `id`
/// ending at virtual offset `ends[id]`; an address never straddles two chunks), found by hash
/// through `index`, which holds only the 4-byte ids. Chunks instead of a box per address: a
/// million 42-byte addresses take 42 MB plus 4 MB of ends, where boxes took 64 MB of allocator
/// chunks plus 16 MB of pointers (measured: the boxes were a fifth of `run`'s peak RSS with a
/// million users). Chunks instead of one string: a string doubling from 32 to 64 MB is copied,
/// and both copies are resident while it is (mimalloc, unlike glibc, has no `mremap` for that).
#[derive(Debug, Clone, Default)]
struct Interner {
    chunks: Vec<String>,
    ends: Vec<u32>,
    index: hashbrown::HashTable<UserId>,
}

/// Bytes of addresses per interner chunk.
const NAME_CHUNK: usize = 1 << 20;

/// Address `id` in an interner's `chunks` and `ends` ("" for an unknown id).
fn name_in<'a>(chunks: &'a [String], ends: &[u32], id: UserId) -> &'a str {
    let i = id as usize;
    let Some(&end) = ends.get(i) else {
        return "";
    };
    let end = end as usize;
    let before = match i.checked_sub(1) {
        Some(b) => ends.get(b).copied().unwrap_or(0) as usize,
        None => 0,
    };
    // The chunk holding the address is the one its last byte is in; it starts right after the
    // address before it, or at that chunk's start when the one before ended in another chunk.
    let chunk = end.saturating_sub(1) / NAME_CHUNK;
    let start = before.max(chunk * NAME_CHUNK);
    chunks
        .get(chunk)
        .and_then(|c| c.get(start - chunk * NAME_CHUNK..end - chunk * NAME_CHUNK))
        .unwrap_or("")
}

impl Interner {
    fn get(&self, name: &str) -> Option<UserId> {
        self.index
            .find(hash_name(name), |&id| self.name(id) == name)
            .copied()
    }

    fn intern(&mut self, name: &str) -> Result<UserId, EventError> {
        if let Some(id) = self.get(name) {
            return Ok(id);
        }
        if name.len() > NAME_CHUNK {
            return Err(EventError::Overflow("address length"));
        }
        let id =
            UserId::try_from(self.ends.len()).map_err(|_| EventError::Overflow("user count"))?;
        // Where the address goes: after the last one, or at the start of a new chunk.
        let (chunk, at) = match self.chunks.last() {
            Some(c) if c.len() + name.len() <= NAME_CHUNK => (self.chunks.len() - 1, c.len()),
            _ => (self.chunks.len(), 0),
        };
        let end = u32::try_from(chunk * NAME_CHUNK + at + name.len())
            .map_err(|_| EventError::Overflow("address bytes"))?;
        if chunk == self.chunks.len() {
            self.chunks.push(String::with_capacity(NAME_CHUNK));
        }
        if let Some(text) = self.chunks.last_mut() {
            text.push_str(name);
        }
        self.ends.push(end);
        let (chunks, ends) = (&self.chunks, &self.ends);
        self.index.insert_unique(hash_name(name), id, |&id| {
            hash_name(name_in(chunks, ends, id))
        });
        Ok(id)
    }

    fn name(&self, id: UserId) -> &str {
        name_in(&self.chunks, &self.ends, id)
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

/// Open positions by id: a dense vector of (id, position), found by hash through a table of
/// 4-byte indexes. At a million positions that is ~60 bytes a position plus its boxed id,
/// where a hash map of boxed keys (at the load factor a doubling table sits at) takes ~100,
/// and twice that while it grows.
#[derive(Debug, Clone, Default)]
struct Positions {
    slots: Vec<(Box<str>, OpenPosition)>,
    index: hashbrown::HashTable<u32>,
}

impl Positions {
    fn len(&self) -> usize {
        self.slots.len()
    }

    fn slot_of(&self, id: &str) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash_name(id), |&i| {
                slots.get(i as usize).is_some_and(|(k, _)| &**k == id)
            })
            .map(|&i| i as usize)
    }

    fn get(&self, id: &str) -> Option<&OpenPosition> {
        self.slot_of(id)
            .and_then(|i| self.slots.get(i))
            .map(|(_, p)| p)
    }

    /// Sets the position of `id`, adding it if new.
    fn put(&mut self, id: &str, p: OpenPosition) {
        if let Some(slot) = self.slot_of(id).and_then(|i| self.slots.get_mut(i)) {
            slot.1 = p;
            return;
        }
        // A u32 index covers more positions than memory could hold.
        let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push((Box::from(id), p));
        let slots = &self.slots;
        self.index.insert_unique(hash_name(id), i, |&i| {
            hash_name(slots.get(i as usize).map_or("", |(k, _)| &**k))
        });
    }

    /// Removes `id`; the last slot moves into its place.
    fn remove(&mut self, id: &str) -> Option<OpenPosition> {
        let slots = &self.slots;
        let entry = self
            .index
            .find_entry(hash_name(id), |&i| {
                slots.get(i as usize).is_some_and(|(k, _)| &**k == id)
            })
            .ok()?;
        let (i, _) = entry.remove();
        let i = i as usize;
        let (_, p) = self.slots.swap_remove(i);
        if let Some((moved, _)) = self.slots.get(i) {
            let last = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
            if let Some(at) = self.index.find_mut(hash_name(moved), |&j| j == last) {
                *at = u32::try_from(i).unwrap_or(u32::MAX);
            }
        }
        Some(p)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &OpenPosition)> {
        self.slots.iter().map(|(k, p)| (&**k, p))
    }

    fn reserve(&mut self, n: usize) {
        self.slots.reserve_exact(n);
        let slots = &self.slots;
        self.index.reserve(n, |&i| {
            hash_name(slots.get(i as usize).map_or("", |(k, _)| &**k))
        });
    }
}

/// An open position as the engine tracks it: enough to integrate holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenPosition {
    pub(crate) user: UserId,
    /// |size| × entry price, never negative.
    pub(crate) notional: Decimal,
    /// When the notional (or owner) last changed. The current segment
    /// starts at max(since, start of the current stream hour), so hourly
    /// settlement never has to write anything back (nothing to persist).
    pub(crate) since: i64,
}

#[derive(Debug, Clone, Default)]
struct Changes {
    stream_time: bool,
    /// Hashed (a fill adds two, a backlog batch hundreds of thousands); drained in order.
    volumes: FastSet<(UserId, EpochId)>,
    referrals: BTreeSet<UserId>,
    positions: BTreeSet<Box<str>>,
    pnl_paid: Vec<Box<str>>,
}

/// The rules engine's memory between transactions. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct State {
    users: Interner,
    stream_time: Option<i64>,
    volumes: FastMap<(UserId, EpochId), Decimal>,
    referrer_of: FastMap<UserId, UserId>,
    /// Hashed, not ordered: [`State::positions_iter`] sorts when an order is needed.
    positions: Positions,
    pnl_paid: BTreeSet<Box<str>>,
    changes: Option<Changes>,
}

/// A user's eligible trading volume in one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRow {
    /// Address, lowercase.
    pub user: String,
    /// Epoch.
    pub epoch: EpochId,
    /// Volume; 0 means the row can be deleted.
    #[serde(with = "dec")]
    pub volume: Decimal,
}

/// A referee's binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralRow {
    /// Address, lowercase.
    pub referee: String,
    /// Bound referrer, or `None` when unbound (row can be deleted).
    pub referrer: Option<String>,
}

/// An open position's integration state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenPositionRow {
    /// Owner address, lowercase.
    pub user: String,
    /// |size| × entry price.
    #[serde(with = "dec")]
    pub notional: Decimal,
    /// When the notional last changed (µs).
    pub since: i64,
}

/// A position id and its open state, or `None` when no longer tracked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PositionRow {
    /// Position id.
    pub id: String,
    /// Open state, or `None` when closed/deleted (row can be deleted).
    pub open: Option<OpenPositionRow>,
}

/// State rows keyed by natural keys: both the unit of incremental
/// persistence and (as a full dump) the serialized form of [`State`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateDelta {
    /// Stream time, when it changed (always present in a full dump of a
    /// state that has seen a transaction).
    pub stream_time: Option<i64>,
    /// Changed volumes.
    pub volumes: Vec<VolumeRow>,
    /// Changed bindings.
    pub referrals: Vec<ReferralRow>,
    /// Changed positions.
    pub positions: Vec<PositionRow>,
    /// Positions newly paid PnL (a set that only grows).
    pub pnl_paid: Vec<String>,
}

impl StateDelta {
    /// Whether nothing changed, so the daemon can skip the write.
    pub fn is_empty(&self) -> bool {
        self.stream_time.is_none()
            && self.volumes.is_empty()
            && self.referrals.is_empty()
            && self.positions.is_empty()
            && self.pnl_paid.is_empty()
    }
}

impl State {
    /// An empty state: no stream time yet, nothing known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts recording changed keys for [`State::drain_delta`]. Off by
    /// default so a caller that persists whole states does not accumulate
    /// an ever-growing change set.
    pub fn enable_change_tracking(&mut self) {
        if self.changes.is_none() {
            self.changes = Some(Changes::default());
        }
    }

    /// Max commit time seen; `None` before the first transaction.
    pub fn stream_time(&self) -> Option<i64> {
        self.stream_time
    }

    /// Eligible volume of `user` (any case) in `epoch`, for tests and APIs.
    pub fn volume(&self, user: &str, epoch: EpochId) -> Decimal {
        let user = super::normalize_address(user);
        self.users
            .get(&user)
            .and_then(|u| self.volumes.get(&(u, epoch)).copied())
            .unwrap_or(Decimal::ZERO)
    }

    /// Current referrer of `referee` (any case), lowercase.
    pub fn referrer_of(&self, referee: &str) -> Option<&str> {
        let referee = super::normalize_address(referee);
        let id = self.users.get(&referee)?;
        self.referrer_of.get(&id).map(|r| self.users.name(*r))
    }

    /// Makes room for `n` more open positions at once, so that loading a million does not
    /// hold the table twice while it doubles.
    pub fn reserve_positions(&mut self, n: usize) {
        self.positions.reserve(n);
    }

    /// Number of positions the engine integrates holding for.
    pub fn open_positions(&self) -> usize {
        self.positions.len()
    }

    /// The tracked state of an open position.
    pub fn open_position(&self, id: &str) -> Option<OpenPositionRow> {
        self.positions.get(id).map(|p| self.position_row(p))
    }

    /// Whether a position was already paid PnL (at most once per id).
    pub fn pnl_paid(&self, position_id: &str) -> bool {
        self.pnl_paid.contains(position_id)
    }

    /// Distinct addresses known, for a memory gauge.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    fn position_row(&self, p: &OpenPosition) -> OpenPositionRow {
        OpenPositionRow {
            user: self.users.name(p.user).to_owned(),
            notional: p.notional,
            since: p.since,
        }
    }

    /// Everything as rows, sorted by key within each list: the full dump.
    pub fn to_delta(&self) -> StateDelta {
        let mut volumes: Vec<VolumeRow> = self
            .volumes
            .iter()
            .map(|((u, e), v)| VolumeRow {
                user: self.users.name(*u).to_owned(),
                epoch: *e,
                volume: *v,
            })
            .collect();
        volumes.sort_by(|a, b| (&a.user, a.epoch).cmp(&(&b.user, b.epoch)));
        let mut referrals: Vec<ReferralRow> = self
            .referrer_of
            .iter()
            .map(|(a, b)| ReferralRow {
                referee: self.users.name(*a).to_owned(),
                referrer: Some(self.users.name(*b).to_owned()),
            })
            .collect();
        referrals.sort_by(|a, b| a.referee.cmp(&b.referee));
        StateDelta {
            stream_time: self.stream_time,
            volumes,
            referrals,
            positions: self
                .positions_iter()
                .into_iter()
                .map(|(id, p)| PositionRow {
                    id: id.to_string(),
                    open: Some(self.position_row(p)),
                })
                .collect(),
            pnl_paid: self.pnl_paid.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Rows changed since the last drain (empty when tracking is off).
    pub fn drain_delta(&mut self) -> StateDelta {
        let Some(ch) = self.changes.as_mut().map(std::mem::take) else {
            return StateDelta::default();
        };
        let mut volumes: Vec<&(UserId, EpochId)> = ch.volumes.iter().collect();
        volumes.sort_unstable();
        StateDelta {
            stream_time: if ch.stream_time {
                self.stream_time
            } else {
                None
            },
            volumes: volumes
                .into_iter()
                .map(|k| VolumeRow {
                    user: self.users.name(k.0).to_owned(),
                    epoch: k.1,
                    volume: self.volumes.get(k).copied().unwrap_or(Decimal::ZERO),
                })
                .collect(),
            referrals: ch
                .referrals
                .iter()
                .map(|k| ReferralRow {
                    referee: self.users.name(*k).to_owned(),
                    referrer: self
                        .referrer_of
                        .get(k)
                        .map(|r| self.users.name(*r).to_owned()),
                })
                .collect(),
            positions: ch
                .positions
                .iter()
                .map(|id| PositionRow {
                    id: id.to_string(),
                    open: self.positions.get(id).map(|p| self.position_row(p)),
                })
                .collect(),
            pnl_paid: ch.pnl_paid.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Applies rows (a drained delta, or a full dump onto an empty state).
    /// Addresses are normalized on the way in. The applied rows are also
    /// recorded as changes when tracking is on.
    pub fn apply_delta(&mut self, delta: StateDelta) -> Result<(), EventError> {
        if let Some(t) = delta.stream_time {
            self.set_stream_time(t);
        }
        for r in delta.volumes {
            let u = self.intern(&super::normalize_address(&r.user))?;
            self.set_volume(u, r.epoch, r.volume);
        }
        for r in delta.referrals {
            let a = self.intern(&super::normalize_address(&r.referee))?;
            match r.referrer {
                Some(b) => {
                    let b = self.intern(&super::normalize_address(&b))?;
                    self.set_referrer(a, Some(b));
                }
                None => self.set_referrer(a, None),
            }
        }
        for r in delta.positions {
            match r.open {
                Some(p) => {
                    let user = self.intern(&super::normalize_address(&p.user))?;
                    self.put_position(
                        &r.id,
                        OpenPosition {
                            user,
                            notional: p.notional,
                            since: p.since,
                        },
                    );
                }
                None => self.remove_position(&r.id),
            }
        }
        for id in delta.pnl_paid {
            self.mark_pnl_paid(&id);
        }
        Ok(())
    }

    // ---- crate-internal accessors used by the rule modules ----

    pub(crate) fn user_id(&self, name: &str) -> Option<UserId> {
        self.users.get(name)
    }

    pub(crate) fn intern(&mut self, name: &str) -> Result<UserId, EventError> {
        self.users.intern(name)
    }

    pub(crate) fn user_name(&self, id: UserId) -> &str {
        self.users.name(id)
    }

    pub(crate) fn set_stream_time(&mut self, t: i64) {
        if self.stream_time != Some(t) {
            self.stream_time = Some(t);
            if let Some(c) = self.changes.as_mut() {
                c.stream_time = true;
            }
        }
    }

    pub(crate) fn volume_of(&self, user: Option<UserId>, epoch: EpochId) -> Decimal {
        user.and_then(|u| self.volumes.get(&(u, epoch)).copied())
            .unwrap_or(Decimal::ZERO)
    }

    pub(crate) fn set_volume(&mut self, user: UserId, epoch: EpochId, v: Decimal) {
        if v.is_zero() {
            self.volumes.remove(&(user, epoch));
        } else {
            self.volumes.insert((user, epoch), v);
        }
        if let Some(c) = self.changes.as_mut() {
            c.volumes.insert((user, epoch));
        }
    }

    pub(crate) fn referrer_id(&self, referee: UserId) -> Option<UserId> {
        self.referrer_of.get(&referee).copied()
    }

    pub(crate) fn referral_links(&self) -> usize {
        self.referrer_of.len()
    }

    pub(crate) fn set_referrer(&mut self, referee: UserId, referrer: Option<UserId>) {
        match referrer {
            Some(r) => self.referrer_of.insert(referee, r),
            None => self.referrer_of.remove(&referee),
        };
        if let Some(c) = self.changes.as_mut() {
            c.referrals.insert(referee);
        }
    }

    pub(crate) fn position(&self, id: &str) -> Option<OpenPosition> {
        self.positions.get(id).copied()
    }

    /// The open positions in id order (the order settlement writes them in).
    pub(crate) fn positions_iter(&self) -> Vec<(&str, &OpenPosition)> {
        let mut all: Vec<(&str, &OpenPosition)> = self.positions.iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        all
    }

    pub(crate) fn put_position(&mut self, id: &str, p: OpenPosition) {
        self.positions.put(id, p);
        if let Some(c) = self.changes.as_mut() {
            c.positions.insert(Box::from(id));
        }
    }

    pub(crate) fn remove_position(&mut self, id: &str) {
        if self.positions.remove(id).is_some() {
            if let Some(c) = self.changes.as_mut() {
                c.positions.insert(Box::from(id));
            }
        }
    }

    pub(crate) fn mark_pnl_paid(&mut self, id: &str) {
        if self.pnl_paid.insert(Box::from(id)) {
            if let Some(c) = self.changes.as_mut() {
                c.pnl_paid.push(Box::from(id));
            }
        }
    }
}

impl Serialize for State {
    /// Serialized as its full [`StateDelta`] dump: addresses, not ids.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_delta().serialize(s)
    }
}

impl<'de> Deserialize<'de> for State {
    /// Rebuilt by applying the dump to an empty state (tracking off).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let delta = StateDelta::deserialize(d)?;
        let mut st = State::new();
        st.apply_delta(delta).map_err(serde::de::Error::custom)?;
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interned_addresses_round_trip_across_chunk_boundaries() {
        let mut users = Interner::default();
        // Addresses of every length from 0 to 90, some repeated, filling more than two chunks:
        // at each boundary one would have straddled it.
        let names: Vec<String> = (0..120_000)
            .map(|i| {
                format!("{i:x}")
                    .repeat(1 + i % 13)
                    .chars()
                    .take(i % 91)
                    .collect()
            })
            .collect();
        let ids: Vec<UserId> = names.iter().map(|n| users.intern(n).unwrap()).collect();
        assert!(users.chunks.len() >= 3, "{} chunks", users.chunks.len());
        for (name, &id) in names.iter().zip(&ids) {
            assert_eq!(users.name(id), name);
            assert_eq!(users.get(name), Some(id), "{name}");
            assert_eq!(users.intern(name).unwrap(), id, "interned once");
        }
        assert!(users.intern(&"x".repeat(NAME_CHUNK + 1)).is_err());
        assert_eq!(users.name(UserId::MAX), "");
    }
}

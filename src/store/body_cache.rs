//! A bounded cache of decompressed resource bodies, so that reads of the resources clients ask
//! for again and again skip zstd.
//!
//! Keys are `resource_version` keys (`type·id·version`): a stored version never changes once
//! written, so an entry never goes stale and nothing ever has to be invalidated. The cache is
//! split into shards, each behind its own lock, and each shard evicts with the CLOCK policy (a
//! FIFO queue in which an entry read since it last reached the front gets another round), which
//! keeps hot bodies without the bookkeeping of an exact LRU. A body is only admitted on its
//! second read within a while (a "doorkeeper" bit set, as in TinyLFU): reads spread over far
//! more resources than fit would otherwise pay for inserting and evicting on every miss.
//!
//! Invariant: a shard's `bytes` is the sum of the cost of its entries and never exceeds the
//! shard's share of the capacity after an insertion returns.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// What an entry costs besides its key and body bytes (map slot, queue slot, `Arc` header).
const ENTRY_OVERHEAD: usize = 64;

/// Bits of the doorkeeper (128 KiB). It is cleared once a quarter of them have been set, so a
/// read "counts as seen" for roughly the last 2^18 distinct bodies read.
const DOORKEEPER_BITS: usize = 1 << 20;

pub struct BodyCache {
    shards: Vec<Mutex<Shard>>,
    /// Total capacity in bytes; 0 turns the cache off.
    capacity: AtomicUsize,
    hasher: RandomState,
    /// Keys read once recently (by hash); see [`BodyCache::admit`].
    seen: Vec<AtomicU64>,
    /// Bits set in `seen` since it was last cleared.
    seen_count: AtomicUsize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Box<[u8]>, Entry>,
    /// Keys in insertion order, each once: the CLOCK hand is the front.
    queue: VecDeque<Box<[u8]>>,
    bytes: usize,
}

struct Entry {
    body: Arc<[u8]>,
    /// Read since the hand last passed it.
    referenced: bool,
}

impl Default for BodyCache {
    fn default() -> Self {
        BodyCache::new(0)
    }
}

impl BodyCache {
    pub fn new(capacity: usize) -> BodyCache {
        BodyCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            capacity: AtomicUsize::new(capacity),
            hasher: RandomState::new(),
            seen: (0..DOORKEEPER_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            seen_count: AtomicUsize::new(0),
        }
    }

    /// Changes the capacity; entries beyond it go at the next insertion into their shard.
    pub fn set_capacity(&self, bytes: usize) {
        self.capacity.store(bytes, Ordering::Relaxed);
    }

    fn shard_capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed) / SHARDS
    }

    fn shard(&self, key: &[u8]) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// The body stored under `key`, if cached.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.shard_capacity() == 0 {
            return None;
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = shard.entries.get_mut(key)?;
        entry.referenced = true;
        Some(entry.body.to_vec())
    }

    /// Whether a body read and not found should be kept: yes if its key was read before
    /// (since the doorkeeper was last cleared); otherwise it is marked as read once.
    fn admit(&self, key: &[u8]) -> bool {
        let bit = (self.hasher.hash_one((key, 0x5eed_u16)) as usize) % DOORKEEPER_BITS;
        let mask = 1u64 << (bit % 64);
        if self.seen[bit / 64].fetch_or(mask, Ordering::Relaxed) & mask != 0 {
            return true;
        }
        if self.seen_count.fetch_add(1, Ordering::Relaxed) + 1 >= DOORKEEPER_BITS / 4 {
            self.seen_count.store(0, Ordering::Relaxed);
            for word in &self.seen {
                word.store(0, Ordering::Relaxed);
            }
        }
        false
    }

    /// Remembers `body`, just read, under `key` if it was read before recently (see
    /// [`BodyCache::admit`]). A body larger than an eighth of a shard is not kept: it would push
    /// out many others.
    pub fn insert(&self, key: &[u8], body: &[u8]) {
        let capacity = self.shard_capacity();
        let cost = key.len() + body.len() + ENTRY_OVERHEAD;
        if capacity == 0 || cost > capacity / 8 || !self.admit(key) {
            return;
        }
        let mut shard = self.shard(key).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.entries.contains_key(key) {
            return;
        }
        let key: Box<[u8]> = key.into();
        shard.entries.insert(key.clone(), Entry { body: body.into(), referenced: false });
        shard.queue.push_back(key);
        shard.bytes += cost;
        shard.evict_down_to(capacity);
    }

    /// Bytes held, over all shards.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards.iter().map(|shard| shard.lock().unwrap().bytes).sum()
    }
}

impl Shard {
    /// Evicts until `bytes <= capacity`. Each entry is passed over at most once with its
    /// reference bit set (which the pass clears), so this ends after at most two rounds.
    fn evict_down_to(&mut self, capacity: usize) {
        while self.bytes > capacity {
            let Some(key) = self.queue.pop_front() else { break };
            let Some(entry) = self.entries.get_mut(&key) else { continue };
            if entry.referenced {
                entry.referenced = false;
                self.queue.push_back(key);
                continue;
            }
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= key.len() + entry.body.len() + ENTRY_OVERHEAD;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: usize) -> Vec<u8> {
        format!("Patient\0p{n}\0\x01\x01").into_bytes()
    }

    #[test]
    fn a_cached_body_comes_back_and_an_off_cache_keeps_nothing() {
        let cache = BodyCache::new(1 << 20);
        assert_eq!(cache.get(&key(1)), None);
        // The first read only marks the key as seen; the second keeps the body.
        cache.insert(&key(1), b"{\"resourceType\":\"Patient\"}");
        assert_eq!(cache.get(&key(1)), None);
        cache.insert(&key(1), b"{\"resourceType\":\"Patient\"}");
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"{\"resourceType\":\"Patient\"}"[..]));
        let off = BodyCache::new(0);
        off.insert(&key(1), b"{}");
        off.insert(&key(1), b"{}");
        assert_eq!(off.get(&key(1)), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_what_is_read() {
        let capacity = 256 * 1024;
        let cache = BodyCache::new(capacity);
        let body = vec![b'x'; 1000];
        cache.insert(&key(0), &body);
        cache.insert(&key(0), &body);
        for n in 1..5000 {
            // Key 0 is read all along: the CLOCK keeps it.
            assert!(cache.get(&key(0)).is_some(), "the hot body was evicted after {n} inserts");
            cache.insert(&key(n), &body);
            cache.insert(&key(n), &body);
            assert!(cache.bytes() <= capacity, "{} bytes held", cache.bytes());
        }
        let kept = (1..5000).filter(|n| cache.get(&key(*n)).is_some()).count();
        assert!(kept > 100 && kept < 300, "{kept} bodies of 1 KB kept in 256 KiB");
    }

    #[test]
    fn a_body_too_large_for_its_share_is_not_kept() {
        let cache = BodyCache::new(SHARDS * 8 * 1024);
        for _ in 0..2 {
            cache.insert(&key(1), &vec![b'x'; 2000]);
            cache.insert(&key(2), &vec![b'x'; 500]);
        }
        assert_eq!(cache.get(&key(1)), None);
        assert!(cache.get(&key(2)).is_some());
    }

    #[test]
    fn bodies_read_once_are_not_kept_and_the_doorkeeper_forgets() {
        let cache = BodyCache::new(64 << 20);
        for n in 0..1000 {
            cache.insert(&key(n), b"{}");
        }
        // Only a key whose doorkeeper bit another key had set (a hash collision) gets in: with
        // 1,000 keys over 2^20 bits, about 0.5 such keys are expected, and 10 or more has a
        // probability below 1e-9.
        let kept = (0..1000).filter(|n| cache.get(&key(*n)).is_some()).count();
        assert!(kept < 10, "nothing read once is kept, but {kept} bodies are");
        // Once a quarter of its bits are set, the doorkeeper starts over: earlier reads no
        // longer count.
        let read_once = (0..1000).find(|n| cache.get(&key(*n)).is_none()).unwrap();
        let mut n = 1000;
        loop {
            let before = cache.seen_count.load(Ordering::Relaxed);
            cache.insert(&key(n), b"{}");
            n += 1;
            if cache.seen_count.load(Ordering::Relaxed) < before {
                break;
            }
            assert!(n < DOORKEEPER_BITS, "the doorkeeper is cleared");
        }
        cache.insert(&key(read_once), b"{}");
        assert_eq!(cache.get(&key(read_once)), None, "its first read was before the doorkeeper was cleared");
        cache.insert(&key(read_once), b"{}");
        assert!(cache.get(&key(read_once)).is_some());
    }
}

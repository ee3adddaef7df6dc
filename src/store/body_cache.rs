//! A bounded cache of decompressed resource bodies, so that reads of the resources clients ask
//! for again and again skip zstd.
//!
//! Keys are `resource_version` keys (`type·id·version`): a stored version never changes once
//! written, so an entry never goes stale and nothing ever has to be invalidated. The cache is
//! split into shards, each behind its own lock, and each shard evicts with the CLOCK policy (a
//! FIFO queue in which an entry read since it last reached the front gets another round), which
//! keeps hot bodies without the bookkeeping of an exact LRU.
//!
//! Invariant: a shard's `bytes` is the sum of the cost of its entries and never exceeds the
//! shard's share of the capacity after an insertion returns.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

/// What an entry costs besides its key and body bytes (map slot, queue slot, `Arc` header).
const ENTRY_OVERHEAD: usize = 64;

pub struct BodyCache {
    shards: Vec<Mutex<Shard>>,
    /// Total capacity in bytes; 0 turns the cache off.
    capacity: AtomicUsize,
    hasher: RandomState,
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

    /// Remembers `body` under `key`. A body larger than an eighth of a shard is not kept: it
    /// would push out many others.
    pub fn insert(&self, key: &[u8], body: &[u8]) {
        let capacity = self.shard_capacity();
        let cost = key.len() + body.len() + ENTRY_OVERHEAD;
        if capacity == 0 || cost > capacity / 8 {
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
        cache.insert(&key(1), b"{\"resourceType\":\"Patient\"}");
        assert_eq!(cache.get(&key(1)).as_deref(), Some(&b"{\"resourceType\":\"Patient\"}"[..]));
        let off = BodyCache::new(0);
        off.insert(&key(1), b"{}");
        assert_eq!(off.get(&key(1)), None);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_what_is_read() {
        let capacity = 256 * 1024;
        let cache = BodyCache::new(capacity);
        let body = vec![b'x'; 1000];
        cache.insert(&key(0), &body);
        for n in 1..5000 {
            // Key 0 is read all along: the CLOCK keeps it.
            assert!(cache.get(&key(0)).is_some(), "the hot body was evicted after {n} inserts");
            cache.insert(&key(n), &body);
            assert!(cache.bytes() <= capacity, "{} bytes held", cache.bytes());
        }
        let kept = (1..5000).filter(|n| cache.get(&key(*n)).is_some()).count();
        assert!(kept > 100 && kept < 300, "{kept} bodies of 1 KB kept in 256 KiB");
    }

    #[test]
    fn a_body_too_large_for_its_share_is_not_kept() {
        let cache = BodyCache::new(SHARDS * 8 * 1024);
        cache.insert(&key(1), &vec![b'x'; 2000]);
        assert_eq!(cache.get(&key(1)), None);
        cache.insert(&key(2), &vec![b'x'; 500]);
        assert!(cache.get(&key(2)).is_some());
    }
}

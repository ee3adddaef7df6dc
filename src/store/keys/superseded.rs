//! `superseded`: the log of resource versions whose search index entries are no longer current,
//! in the order they were superseded; what the garbage collector works through.
//!
//! Key: `superseded_t(u64 BE) type 0x00 id 0x00 version(u64 BE)`; no value. `superseded_t` is
//! the logical time of the version (or deletion) that replaced `version`. The layout is that of
//! `system_history` (time first, then the version's address), so the codec is shared.

pub use super::system_history::{at, decode, encode};

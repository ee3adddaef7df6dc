//! Sources: the upstream systems (EHRs) whose records Braid holds, each in its own namespace
//! (see [`namespace`]).

pub mod namespace;

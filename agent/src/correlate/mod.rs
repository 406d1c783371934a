//! Correlation: what each process puts on the wire (`wire`), judged alone, and against the spans
//! it exports (`traces`). One function per rule, pure over recorded state, unit-tested on
//! recorded sequences.

pub mod traces;
mod wire;

pub use wire::{finding_key, judge_outbound, propagation, ProcessStats, Verdict};

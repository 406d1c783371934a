//! tracegap agent: kernel capture of HTTP request headers, correlation with exported spans, and
//! findings about where traces break.
//!
//! One room per stage, data flowing one way (see `pipeline`):
//! `capture` (eBPF programs, ring buffer) → `parse` (requests and their trace context) →
//! `attribute` (process, container, pod, peer) → `correlate` (every rule) → `findings` →
//! `snapshot` → `report` (table, JSON, OTLP). `otlp` receives the spans processes export;
//! `model` holds the facts all of them share; `buildinfo` reads Go executables' build
//! information for `capture` and `attribute`.

pub mod attribute;
pub mod buildinfo;
pub mod capture;
pub mod check;
pub mod cli;
pub mod correlate;
pub mod findings;
pub mod model;
pub mod otlp;
pub mod parse;
pub mod pipeline;
pub mod report;
mod run;
pub mod session;
pub mod snapshot;

pub use run::{run, shutdown_signal};

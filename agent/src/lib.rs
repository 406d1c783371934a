//! tracegap agent: kernel capture of HTTP request headers, correlation with exported spans, and
//! findings about where traces break.

pub mod capture;
pub mod cgroup;
pub mod cli;
pub mod correlate;
pub mod export;
pub mod findings;
pub mod gotls;
pub mod h2;
pub mod h2_conns;
pub mod http;
pub mod k8s;
pub mod otlp;
pub mod path_template;
pub mod pipeline;
pub mod process;
pub mod report;
mod run;
pub mod tls;
pub mod trace_context;
pub mod uprobe_multi;

pub use run::{run, shutdown_signal};

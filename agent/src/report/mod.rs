//! Outputs: the local report (`json` lines or the live `table`) and the OTLP export of
//! findings and metrics (`otlp`). Each reads the pipeline's [`Snapshot`], never its state.

pub mod json;
pub mod otlp;
pub mod path_template;
pub mod table;

use std::{
    io::Write,
    time::{Duration, Instant},
};

use crate::{cli::Output, snapshot::Snapshot};

/// How often JSON output prints coverage and counter lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

pub struct Reporter {
    output: Output,
    out: Box<dyn Write + Send>,
    last_summary: Instant,
}

impl Reporter {
    pub fn new(output: Output, out: Box<dyn Write + Send>) -> Self {
        Self {
            output,
            out,
            last_summary: Instant::now(),
        }
    }

    /// Called every tick.
    pub fn tick(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                self.print_changed(snapshot)?;
                if self.last_summary.elapsed() >= SUMMARY_EVERY {
                    self.last_summary = Instant::now();
                    self.print_summary(snapshot)?;
                }
            }
            Output::Table => {
                write!(self.out, "\x1b[H\x1b[2J{}", table::render(snapshot))?;
            }
        }
        self.out.flush()
    }

    /// Everything not yet printed, at exit.
    pub fn finish(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                self.print_changed(snapshot)?;
                self.print_summary(snapshot)?;
            }
            Output::Table => write!(self.out, "{}", table::render(snapshot))?,
        }
        self.out.flush()
    }

    fn print_changed(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        for f in &snapshot.changed {
            writeln!(self.out, "{}", json::finding(f))?;
        }
        Ok(())
    }

    fn print_summary(&mut self, snapshot: &Snapshot) -> std::io::Result<()> {
        for line in json::coverage(snapshot) {
            writeln!(self.out, "{line}")?;
        }
        writeln!(self.out, "{}", json::counters(snapshot))
    }
}

//! The end of a check: per service requests, coverage and findings; the verdict; and the same
//! as text, JUnit XML, Markdown and JSON.

use std::{collections::BTreeMap, fmt::Write as _, process::ExitStatus};

use serde_json::{json, Value};

use super::{exit_code, write_file};
use crate::{
    cli::{CheckArgs, FailOn},
    findings::{Finding, Severity},
    parse::trace_context::Propagation,
    report::json,
    session::Final,
};

/// One service of the tree: its processes' requests together.
#[derive(Debug, Default)]
struct Service {
    /// Named by `service.name` (else by the process name): only named services are held to
    /// `--require-coverage` (a `curl` in a script is not a service).
    named: bool,
    processes: usize,
    requests: u64,
    with_context: u64,
    /// Requests judged (not undetermined): the coverage denominator.
    judged: u64,
}

impl Service {
    fn coverage_percent(&self) -> Option<f64> {
        (self.judged > 0).then(|| 100.0 * self.with_context as f64 / self.judged as f64)
    }
}

pub struct Summary {
    command: String,
    /// COMMAND's status; `None` when the check was interrupted first.
    status: Option<ExitStatus>,
    services: BTreeMap<String, Service>,
    /// Findings about the tree (or every process with `--all`), worst first.
    findings: Vec<Finding>,
    fail_on: FailOn,
    require_coverage: Option<f64>,
    counters: Value,
}

impl Summary {
    pub fn new(args: &CheckArgs, status: Option<ExitStatus>, end: Final, root: u32) -> Self {
        let in_scope = |pid: u32| args.all || end.tree.as_ref().is_some_and(|t| t.contains(&pid));
        let mut services: BTreeMap<String, Service> = BTreeMap::new();
        for row in end.snapshot.processes.iter().filter(|r| in_scope(r.pid)) {
            let s = &row.stats;
            if s.outbound() == 0 {
                continue;
            }
            let name = service_key(row.service_name.as_deref(), row.comm.as_deref());
            let service = services.entry(name).or_default();
            service.named = row.service_name.is_some();
            service.processes += 1;
            service.requests += s.outbound();
            service.with_context += s.outbound_with(Propagation::W3c);
            service.judged += s.outbound() - s.outbound_with(Propagation::Undetermined);
        }
        let mut findings: Vec<Finding> = end
            .findings
            .into_iter()
            .filter(|f| in_scope(f.key.pid))
            .collect();
        findings
            .sort_by(|a, b| (a.key.kind.severity(), &a.key).cmp(&(b.key.kind.severity(), &b.key)));
        log::debug!("check: tree of pid {root}: {:?}", end.tree.map(|t| t.len()));
        Self {
            command: args.command.join(" "),
            status,
            services,
            findings,
            fail_on: args.fail_on,
            require_coverage: args.require_coverage,
            counters: json::counters(&end.snapshot),
        }
    }

    /// Whether a finding fails the check.
    fn fails(&self, f: &Finding) -> bool {
        self.fail_on.includes(f.key.kind.severity())
    }

    fn failing_findings(&self) -> usize {
        self.findings.iter().filter(|f| self.fails(f)).count()
    }

    /// Services whose coverage is below `--require-coverage`.
    fn below_coverage(&self) -> Vec<&str> {
        let Some(required) = self.require_coverage else {
            return Vec::new();
        };
        self.services
            .iter()
            .filter(|(_, s)| s.named && s.coverage_percent().is_some_and(|c| c < required))
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// COMMAND's own failure first, then the findings, then the coverage.
    pub fn exit_code(&self) -> i32 {
        match self.status.map(exit_code) {
            None => 130,
            Some(code) if code != 0 => code,
            Some(_) if self.failing_findings() > 0 || !self.below_coverage().is_empty() => 1,
            Some(_) => 0,
        }
    }

    /// One line saying why the check passed or failed.
    fn verdict(&self) -> String {
        let code = self.exit_code();
        let why = match self.status.map(exit_code) {
            None => "interrupted".to_owned(),
            Some(c) if c != 0 => format!("the command failed (exit {c})"),
            Some(_) => {
                let mut reasons = Vec::new();
                let n = self.failing_findings();
                if n > 0 {
                    reasons.push(format!(
                        "{n} finding{} at or above {}",
                        if n == 1 { "" } else { "s" },
                        self.fail_on.as_str()
                    ));
                }
                let below = self.below_coverage();
                if !below.is_empty() {
                    reasons.push(format!(
                        "coverage below {}% for {}",
                        self.require_coverage.unwrap_or_default(),
                        below.join(", ")
                    ));
                }
                if reasons.is_empty() {
                    "no finding at or above the threshold".to_owned()
                } else {
                    reasons.join("; ")
                }
            }
        };
        format!(
            "{} (exit {code}): {why}",
            if code == 0 { "PASS" } else { "FAIL" }
        )
    }

    fn finding_cells(&self, service: &str) -> String {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for f in self.findings.iter().filter(|f| {
            service_key(
                f.subject.service_name.as_deref(),
                Some(f.subject.comm.as_str()),
            ) == service
        }) {
            *counts.entry(f.key.kind.as_str()).or_default() += f.count;
        }
        if counts.is_empty() {
            return "-".to_owned();
        }
        counts
            .iter()
            .map(|(k, n)| format!("{k}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ok = writeln!(s, "\ntracegap check: {}", self.command);
        let _ok = writeln!(
            s,
            "{:<24} {:>9} {:>9} {:>9}  FINDINGS",
            "SERVICE", "PROCESSES", "REQUESTS", "COVERAGE"
        );
        for (name, svc) in &self.services {
            let _ok = writeln!(
                s,
                "{:<24} {:>9} {:>9} {:>9}  {}",
                name,
                svc.processes,
                svc.requests,
                percent(svc.coverage_percent()),
                self.finding_cells(name)
            );
        }
        if !self.findings.is_empty() {
            s.push('\n');
        }
        for f in &self.findings {
            let _ok = writeln!(
                s,
                "{} {} ({}): {}",
                if self.fails(f) { "✗" } else { "·" },
                f.key.kind.as_str(),
                f.key.kind.severity().as_str(),
                f.sentence()
            );
        }
        let _ok = writeln!(s, "\nresult: {}", self.verdict());
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ok = writeln!(s, "### tracegap check: {}\n", self.verdict());
        let _ok = writeln!(s, "`{}`\n", self.command.replace('`', "'"));
        let _ok = writeln!(
            s,
            "| service | processes | requests | coverage | findings |"
        );
        let _ok = writeln!(s, "|---|---:|---:|---:|---|");
        for (name, svc) in &self.services {
            let _ok = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                md_escape(name),
                svc.processes,
                svc.requests,
                percent(svc.coverage_percent()),
                md_escape(&self.finding_cells(name))
            );
        }
        if !self.findings.is_empty() {
            s.push('\n');
        }
        for f in &self.findings {
            let _ok = writeln!(
                s,
                "- {}**{}** ({}): {}",
                if self.fails(f) { "❌ " } else { "" },
                f.key.kind.as_str(),
                f.key.kind.severity().as_str(),
                md_escape(&f.sentence())
            );
        }
        s
    }

    /// One test case per service (its coverage) and per finding; failures carry the text.
    pub fn junit(&self) -> String {
        let mut cases = String::new();
        let mut failures = 0;
        let mut tests = 0;
        for (name, svc) in &self.services {
            tests += 1;
            let _ok = write!(
                cases,
                r#"    <testcase classname="tracegap.{}" name="trace context coverage">"#,
                xml_escape(name)
            );
            if self.below_coverage().contains(&name.as_str()) {
                failures += 1;
                let message = format!(
                    "{name}: {} of requests carry W3C trace context, below the required {}%",
                    percent(svc.coverage_percent()),
                    self.require_coverage.unwrap_or_default()
                );
                let _ok = write!(
                    cases,
                    r#"<failure type="coverage" message="{}"/>"#,
                    xml_escape(&message)
                );
            }
            cases.push_str("</testcase>\n");
        }
        for f in &self.findings {
            tests += 1;
            let service = service_key(f.subject.service_name.as_deref(), Some(&f.subject.comm));
            let name = format!(
                "{} {} {}{}",
                f.key.kind.as_str(),
                f.key.method,
                f.key.path,
                f.key.peer.map(|p| format!(" → {p}")).unwrap_or_default()
            );
            // A process-level finding has no method or path.
            let name = name.trim_end();
            let _ok = write!(
                cases,
                r#"    <testcase classname="tracegap.{}" name="{}">"#,
                xml_escape(&service),
                xml_escape(name)
            );
            let text = f.sentence();
            if self.fails(f) {
                failures += 1;
                let _ok = write!(
                    cases,
                    r#"<failure type="{}" message="{}">{}</failure>"#,
                    f.key.kind.as_str(),
                    xml_escape(&text),
                    xml_escape(&format!("{text}\nevidence: {:?}", f.evidence))
                );
            } else {
                let _ok = write!(cases, "<system-out>{}</system-out>", xml_escape(&text));
            }
            cases.push_str("</testcase>\n");
        }
        if let Some(code) = self.status.map(exit_code).filter(|&c| c != 0) {
            tests += 1;
            failures += 1;
            let _ok = writeln!(
                cases,
                "    <testcase classname=\"tracegap\" name=\"command\"><failure type=\"command\" \
                 message=\"{} exited {code}\"/></testcase>",
                xml_escape(&self.command)
            );
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"tracegap\" \
             tests=\"{tests}\" failures=\"{failures}\">\n  <testsuite name=\"tracegap check\" \
             tests=\"{tests}\" failures=\"{failures}\">\n{cases}  </testsuite>\n</testsuites>\n"
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "command": self.command,
            "command_exit_code": self.status.map(exit_code),
            "exit_code": self.exit_code(),
            "result": self.verdict(),
            "fail_on": self.fail_on.as_str(),
            "require_coverage": self.require_coverage,
            "services": self.services.iter().map(|(name, s)| json!({
                "service": name,
                "processes": s.processes,
                "requests": s.requests,
                "with_context": s.with_context,
                "coverage_percent": s.coverage_percent(),
            })).collect::<Vec<_>>(),
            "findings": self.findings.iter().map(|f| {
                let mut v = json::finding(f);
                v["fails_check"] = json!(self.fails(f));
                v
            }).collect::<Vec<_>>(),
            "counters": self.counters,
        })
    }

    /// The text to stdout, and the files asked for.
    pub fn write(&self, args: &CheckArgs) -> anyhow::Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(self.text().as_bytes())?;
        out.flush()?;
        if let Some(path) = &args.junit {
            write_file(path, &self.junit())?;
        }
        if let Some(path) = &args.markdown {
            write_file(path, &self.markdown())?;
        }
        if let Some(path) = &args.json {
            write_file(path, &format!("{:#}\n", self.json()))?;
        }
        Ok(())
    }
}

/// A service by its `service.name`, else by the process name.
fn service_key(service: Option<&str>, comm: Option<&str>) -> String {
    match (service, comm) {
        (Some(s), _) => s.to_owned(),
        (None, Some(c)) if !c.is_empty() => format!("{c} (no service.name)"),
        _ => "(unknown)".to_owned(),
    }
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%"))
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 allows no other control characters.
            c if c.is_control() && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

impl FailOn {
    /// Whether a finding of `severity` fails the check.
    pub fn includes(self, severity: Severity) -> bool {
        match self {
            Self::Error => severity == Severity::Error,
            Self::Warning => severity != Severity::Info,
            Self::Info => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_is_escaped() {
        assert_eq!(
            xml_escape("<a href=\"x\">&'\u{1}"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
    }

    #[test]
    fn fail_on_thresholds() {
        assert!(FailOn::Error.includes(Severity::Error));
        assert!(!FailOn::Error.includes(Severity::Warning));
        assert!(FailOn::Warning.includes(Severity::Warning));
        assert!(!FailOn::Warning.includes(Severity::Info));
        assert!(FailOn::Info.includes(Severity::Info));
    }
}

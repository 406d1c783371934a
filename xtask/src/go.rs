//! Go programs of the tests and the demo (tests/go: the shop's services, its load generator,
//! `tlsoffsets`, the `sdkclient` and `plainclient` of the silent-SDK tests, and `sdkclient-skew`
//! built with tests/go/go.skew.mod; tests/go/jaeger: Jaeger v2), built with the `go` on PATH into
//! target/go/.
//!
//! The build and module caches are Go's own, per user (`go env GOCACHE GOMODCACHE`, under
//! $HOME), as for any Go build: a second build only checks that nothing changed (Go's build
//! cache decides; `go build -o` reads an existing output's build ID and, when it matches, only
//! touches its mtime: measured with strace), and a fresh clone on the same machine (CI) reuses
//! them. Measured on the 2-core VM: 656 s from nothing (1.4 GB of modules downloaded, Jaeger
//! compiled), about 1 s when nothing changed, 13 s for a fresh clone with the caches warm.
//! Where Go has no default for one (no $HOME), it goes under target/go-cache/.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::exec::{exec, workspace_root};

/// Environment variable that points the end-to-end tests at the built Go programs.
pub const BIN_DIR_ENV: &str = "TRACEGAP_GO_BIN_DIR";

/// Oldest `go` accepted on PATH: the first with toolchain selection (`go.mod` asks for 1.26;
/// Go 1.21+ either is that or says exactly which toolchain is missing).
const MIN_GO: (u32, u32) = (1, 21);

/// The shop module's go.mod with the skew `replace` (its go.sum is go.skew.sum beside it).
const SKEW_MODFILE: &str = "go.skew.mod";
/// The skew build's `go mod graph`, in target/go/ (read by tests/tests/silent_sdk.rs).
const SKEW_MODGRAPH: &str = "sdkclient-skew.modgraph";

/// The Go module of the shop (services, load generator, helpers).
fn shop_module() -> PathBuf {
    workspace_root().join("tests/go")
}

/// Jaeger v1.75.0 as a `tool` of its own module: its Collector v0.139 / otelhttp v0.63
/// dependencies do not build together with the shop's OpenTelemetry v1.47 / otelhttp v0.72.
fn jaeger_module() -> PathBuf {
    shop_module().join("jaeger")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Where the Go programs go: target/go/.
pub fn bin_dir() -> PathBuf {
    target_dir().join("go")
}

/// Builds every Go program into target/go/ and returns that directory.
pub fn build() -> Result<PathBuf> {
    let version = go_version()?;
    let out = bin_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let started = Instant::now();
    // A trailing slash makes `go build -o` put one binary per main package in the directory.
    let mut shop = go_command(&shop_module());
    shop.args(["build", "-o"])
        .arg(format!("{}/", out.display()))
        .arg("./cmd/...");
    exec(&mut shop)?;
    // The version-skew case of tests/tests/silent_sdk.rs: the same sdkclient, with a `replace`
    // that links go.opentelemetry.io/otel/sdk below the version the build requires.
    let mut skew = go_command(&shop_module());
    skew.args(["build", "-modfile", SKEW_MODFILE, "-o"])
        .arg(out.join("sdkclient-skew"))
        .arg("./cmd/sdkclient");
    exec(&mut skew)?;
    // The skew test checks the build's requirements (`go mod graph`: it fetches the go.mod of
    // every module in the graph, more than the build downloads). Written beside the binary, so
    // the test needs neither `go` nor to know where the module cache is.
    let graph_file = out.join(SKEW_MODGRAPH);
    let mut graph = go_command(&shop_module());
    graph
        .args(["mod", "graph", "-modfile", SKEW_MODFILE])
        .stdout(
            std::fs::File::create(&graph_file)
                .with_context(|| format!("creating {}", graph_file.display()))?,
        );
    exec(&mut graph)?;
    let mut jaeger = go_command(&jaeger_module());
    jaeger
        .args(["build", "-o"])
        .arg(out.join("jaeger"))
        .arg("github.com/jaegertracing/jaeger/cmd/jaeger");
    exec(&mut jaeger)?;
    eprintln!(
        "go: built the shop and Jaeger into {} with {version} in {:.1} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// `go` with settings that do not depend on the caller's: no cgo (static executables, as in
/// most Go containers), no VCS stamping (a git worktree's `.git` is a file), module cache files
/// writable (so the cache can be removed with `rm -r`).
fn go_command(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    // Go's defaults: GOCACHE under $XDG_CACHE_HOME or $HOME/.cache, GOMODCACHE under $GOPATH
    // (default $HOME/go). Where Go would have none, target/go-cache/ stands in.
    let unset = |vars: &[&str]| vars.iter().all(|v| std::env::var_os(v).is_none());
    let cache = target_dir().join("go-cache");
    if unset(&["GOCACHE", "XDG_CACHE_HOME", "HOME"]) {
        cmd.env("GOCACHE", cache.join("build"));
    }
    if unset(&["GOMODCACHE", "GOPATH", "HOME"]) {
        cmd.env("GOMODCACHE", cache.join("mod"));
    }
    cmd.current_dir(dir)
        .env("GOFLAGS", "-modcacherw -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .env_remove("GO111MODULE");
    cmd
}

/// The `go` on PATH, which must be at least [`MIN_GO`]; returns its version line.
fn go_version() -> Result<String> {
    let out = Command::new("go")
        .arg("version")
        .output()
        .context("the Go programs need `go` on PATH (Go 1.21 or later; the shop asks for 1.26)")?;
    if !out.status.success() {
        bail!(
            "`go version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match parse_go_version(&line) {
        Some(v) if v >= MIN_GO => Ok(line),
        Some((major, minor)) => bail!(
            "`go` on PATH is Go {major}.{minor} ({line}); the Go tests need Go {}.{} or later \
             first on PATH (e.g. /usr/local/go/bin)",
            MIN_GO.0,
            MIN_GO.1
        ),
        None => bail!("cannot read the Go version from `go version`: {line:?}"),
    }
}

/// `go version go1.26.8 linux/amd64` → (1, 26); also `go1.21rc2`, `go1.22`.
fn parse_go_version(line: &str) -> Option<(u32, u32)> {
    let v = line.split_whitespace().nth(2)?.strip_prefix("go")?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_go_version;

    #[test]
    fn go_versions() {
        assert_eq!(
            parse_go_version("go version go1.26.8 linux/amd64"),
            Some((1, 26))
        );
        assert_eq!(
            parse_go_version("go version go1.19.8 linux/amd64"),
            Some((1, 19))
        );
        assert_eq!(
            parse_go_version("go version go1.21rc2 linux/amd64"),
            Some((1, 21))
        );
        assert_eq!(
            parse_go_version("go version go1.22 linux/amd64"),
            Some((1, 22))
        );
        assert_eq!(parse_go_version("go version devel +abc"), None);
        assert_eq!(parse_go_version(""), None);
    }
}

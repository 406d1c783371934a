//! Inventories of real processes (this test, a Go program, a "java" with an agent argument, a
//! process that maps an OpenTelemetry library), the cache, and the rules on hand-made ones.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use super::*;
use crate::attribute::process::ProcessCache;

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracegap-inventory-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed and reaped on drop.
struct Running(Child);

impl Running {
    /// Retries ETXTBSY: an executable this test process just wrote may still be open for
    /// writing in a child another test thread forked and has not exec'd yet (rust-lang/rust
    /// #114554), which makes exec fail for a moment.
    fn spawn(cmd: &mut Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        for _ in 0..100 {
            match cmd.spawn() {
                Ok(child) => return Self(child),
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("{cmd:?}: {e}"),
            }
        }
        panic!("{cmd:?}: still ETXTBSY after 1 s")
    }

    /// Waits (bounded) until `/proc/<pid>/exe` is `exe` (the child exec'd).
    fn wait_exe(&self, exe: &Path) {
        let link = format!("/proc/{}/exe", self.0.id());
        for _ in 0..200 {
            if std::fs::read_link(&link).is_ok_and(|l| l == exe) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("{link} never became {}", exe.display());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _killed = self.0.kill();
        let _reaped = self.0.wait();
    }
}

fn info_of(pid: u32) -> ProcessInfo {
    ProcessInfo::clone(ProcessCache::default().get(pid, ""))
}

fn component(name: &str, version: &str, role: Role) -> Component {
    Component {
        name: name.into(),
        version: Some(version.into()),
        replaced: None,
        role,
    }
}

#[test]
fn this_process_has_no_opentelemetry_and_is_read_once() {
    let mut inventories = Inventories::default();
    let me = info_of(std::process::id());
    let first = inventories.of(&me).expect("readable");
    assert_eq!(
        first.runtime, None,
        "a Rust test binary has no Go build information"
    );
    assert!(first.components.is_empty());
    assert_eq!(first.brief(), "-");
    assert!(!first.expects_span_exports());
    let again = inventories.of(&me).expect("cached");
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(inventories.counters.executables_read, 1);
    assert_eq!(inventories.counters.processes_inspected, 1);
    // Another exec of the same file: opened and stat'ed, not read again.
    inventories.exec(me.pid, me.exe.as_deref());
    assert_eq!(inventories.counters.executables_read, 1);
}

#[test]
fn a_process_gone_before_anything_was_read_has_no_inventory() {
    let mut child = Command::new("true").spawn().expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    let mut inventories = Inventories::default();
    let info = info_of(pid);
    assert!(info.exited);
    assert_eq!(inventories.of(&info), None);
    // Read at exec (the record), it is known after the process is gone.
    let mut inventories = Inventories::default();
    let me = info_of(std::process::id());
    inventories.exec(pid, me.exe.as_deref());
    assert_eq!(inventories.counters.unreadable, 1);
}

#[test]
fn a_go_program_has_the_go_runtime() {
    let dir = TempDir::new("go");
    std::fs::write(
        dir.0.join("main.go"),
        "package main\n\nimport \"time\"\n\nfunc main() { time.Sleep(time.Minute) }\n",
    )
    .expect("write main.go");
    let exe = dir.0.join("sleeper");
    let out = Command::new("go")
        .current_dir(&dir.0)
        .env("GOCACHE", std::env::temp_dir().join("tracegap-go-cache"))
        .env("GOPATH", dir.0.join("gopath"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .args(["build", "-o"])
        .arg(&exe)
        .arg("main.go")
        .output()
        .expect("the tests need `go` on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new("go")
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("go env");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();

    let child = Running::spawn(&mut Command::new(&exe));
    child.wait_exe(&exe);
    let mut inventories = Inventories::default();
    inventories.exec(child.0.id(), exe.to_str());
    let inventory = inventories.of(&info_of(child.0.id())).expect("readable");
    assert_eq!(
        inventory.runtime,
        Some(Runtime {
            name: "go",
            version
        })
    );
    assert!(inventory.components.is_empty());
    assert_eq!(
        inventories.counters.processes_inspected, 0,
        "a Go process's maps and command line are not read"
    );
}

#[test]
fn a_java_agent_on_the_command_line_of_a_jvm() {
    let dir = TempDir::new("java");
    // A shell copied under the name `java`: what the agent checks is the executable's name and
    // the `-javaagent:` argument, which this shell carries (as $1) while it waits.
    let java = dir.0.join("java");
    std::fs::copy("/bin/sh", &java).expect("copy /bin/sh");
    let child = Running::spawn(Command::new(&java).args([
        "-c",
        "sleep 60; true",
        "-javaagent:/opt/otel/opentelemetry-javaagent-2.10.0.jar",
    ]));
    child.wait_exe(&java);
    // /proc/<pid>/exe changes before the new arguments are in place (the kernel's exec sets
    // them later; its exec record, which the agent reads, comes after both).
    let cmdline = format!("/proc/{}/cmdline", child.0.id());
    for _ in 0..200 {
        if std::fs::read(&cmdline).is_ok_and(|c| c.windows(11).any(|w| w == b"-javaagent:")) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut inventories = Inventories::default();
    let inventory = inventories.of(&info_of(child.0.id())).expect("readable");
    assert_eq!(
        *inventory.components,
        [component(
            "opentelemetry-javaagent-2.10.0.jar",
            "2.10.0",
            Role::Agent
        )]
    );
    assert!(inventory.expects_span_exports());
    assert_eq!(inventory.brief(), "agent 2.10.0");
}

#[test]
fn a_mapped_opentelemetry_library() {
    let dir = TempDir::new("maps");
    let lib = dir.0.join("libopentelemetry_trace.so");
    std::fs::write(&lib, vec![0u8; 4096]).expect("write a file to map");
    let script = format!(
        "import mmap, time\nf = open({:?}, 'rb')\nm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\nprint('mapped', flush=True)\ntime.sleep(60)\n",
        lib.display().to_string()
    );
    let mut child = Running(
        Command::new("python3")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line.trim(), "mapped");
    let mut inventories = Inventories::default();
    let inventory = inventories.of(&info_of(child.0.id())).expect("readable");
    assert_eq!(inventory.components.len(), 1, "{inventory:?}");
    assert_eq!(inventory.components[0].name, "libopentelemetry_trace.so");
    assert_eq!(inventory.components[0].role, Role::Sdk);
    assert!(
        !inventory.expects_span_exports(),
        "the SDK without an OTLP trace exporter"
    );
}

#[test]
fn what_an_inventory_says() {
    let go = |components: Vec<Component>, spans_off: Option<&str>| Inventory {
        runtime: Some(Runtime {
            name: "go",
            version: "go1.26.8".into(),
        }),
        components: components.into(),
        spans_off: spans_off.map(str::to_owned),
    };
    let api = component("go.opentelemetry.io/otel", "v1.47.0", Role::Api);
    let sdk = component("go.opentelemetry.io/otel/sdk", "v1.47.0", Role::Sdk);
    let exporter = component(
        "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
        "v1.47.0",
        Role::OtlpTraceExporter,
    );
    let wired = go(vec![api.clone(), sdk.clone(), exporter.clone()], None);
    assert!(wired.expects_span_exports());
    assert_eq!(wired.brief(), "sdk v1.47.0");
    assert_eq!(
        wired.components_text(),
        "go.opentelemetry.io/otel@v1.47.0 go.opentelemetry.io/otel/sdk@v1.47.0 \
         go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp@v1.47.0"
    );
    assert!(!go(vec![api.clone(), sdk.clone()], None).expects_span_exports());
    assert!(!go(vec![api.clone(), exporter.clone()], None).expects_span_exports());
    assert!(!go(
        vec![sdk.clone(), exporter.clone()],
        Some("OTEL_TRACES_EXPORTER=none")
    )
    .expects_span_exports());
    assert_eq!(go(vec![api.clone()], None).brief(), "api v1.47.0");

    let mut replaced = sdk.clone();
    replaced.replaced = Some(Replacement::Module {
        path: sdk.name.clone(),
        version: "v1.46.0".into(),
    });
    assert_eq!(replaced.linked_version(), Some("v1.46.0"));
    assert_eq!(
        replaced.describe(),
        "go.opentelemetry.io/otel/sdk@v1.47.0 => go.opentelemetry.io/otel/sdk@v1.46.0"
    );
    assert_eq!(go(vec![replaced.clone()], None).brief(), "sdk v1.46.0*");
    replaced.replaced = Some(Replacement::Directory);
    assert_eq!(replaced.linked_version(), None);
    assert_eq!(
        replaced.describe(),
        "go.opentelemetry.io/otel/sdk@v1.47.0 => (directory)"
    );
}

#[test]
fn span_export_turned_off_by_the_environment() {
    let settings = |exporter: Option<&str>, disabled: bool| SdkSettings {
        traces_exporter: exporter.map(str::to_owned),
        sdk_disabled: disabled,
        java_agent: None,
    };
    assert_eq!(spans_off(&settings(None, false)), None);
    assert_eq!(spans_off(&settings(Some("otlp"), false)), None);
    assert_eq!(spans_off(&settings(Some("console, otlp"), false)), None);
    assert_eq!(
        spans_off(&settings(Some("none"), false)).as_deref(),
        Some("OTEL_TRACES_EXPORTER=none")
    );
    assert_eq!(
        spans_off(&settings(Some("otlp"), true)).as_deref(),
        Some("OTEL_SDK_DISABLED=true")
    );
}

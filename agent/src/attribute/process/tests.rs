//! The process table: exec and fork records make short-lived processes known; /proc serves
//! the rest; the environment's OpenTelemetry facts.

use super::*;

fn exec_facts<'a>(env: &'a [u8], complete: bool) -> ExecFacts<'a> {
    ExecFacts {
        comm: "curl",
        path: Some("/usr/bin/curl"),
        env,
        env_complete: complete,
        cgroup_id: 0,
    }
}

/// A pid above the kernel's pid_max (4194304): never a live process.
const GONE: u32 = 5_000_001;

#[test]
fn reads_own_process() {
    let mut cache = ProcessCache::default();
    let me = std::process::id();
    let info = cache.get(me, "x").clone();
    assert!(!info.exited);
    assert!(info.exe.is_some());
}

#[test]
fn exited_process_keeps_kernel_comm() {
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    let mut cache = ProcessCache::default();
    let info = cache.get(pid, "true").clone();
    assert!(info.exited);
    assert_eq!(info.comm, "true");
    assert!(!info.identity_known());
    assert_eq!(cache.exited_before_lookup, 1);
}

#[test]
fn an_exec_record_identifies_a_process_that_is_gone() {
    let mut cache = ProcessCache::default();
    let env = b"PATH=/bin\0OTEL_SERVICE_NAME=oneshot\0HOME=/root\0";
    cache.exec(GONE, &exec_facts(env, true));
    let info = cache.get(GONE, "curl").clone();
    assert!(info.identity_known(), "{info:?}");
    assert!(info.otel_env);
    assert_eq!(info.service_name.as_deref(), Some("oneshot"));
    assert_eq!(info.comm, "curl");
    assert_eq!(info.exe.as_deref(), Some("/usr/bin/curl"));
    assert_eq!(cache.exited_before_lookup, 0, "/proc was never needed");
}

#[test]
fn an_uninstrumented_exec_is_a_fact_too() {
    let mut cache = ProcessCache::default();
    cache.exec(GONE, &exec_facts(b"PATH=/bin\0HOME=/root\0", true));
    let info = cache.get(GONE, "curl").clone();
    assert!(info.identity_known());
    assert!(!info.otel_env);
}

#[test]
fn a_cut_environment_without_otel_is_unknown_once_the_process_is_gone() {
    let mut cache = ProcessCache::default();
    cache.exec(GONE, &exec_facts(b"PATH=/bin\0HOME=/ro", false));
    assert!(!cache.get(GONE, "curl").identity_known());
    // ...but OTEL_* seen before the cut is a fact.
    cache.exec(GONE, &exec_facts(b"OTEL_SERVICE_NAME=a\0HOME=/ro", false));
    assert!(cache.get(GONE, "curl").otel_env);
}

#[test]
fn a_forked_child_is_its_parent_until_it_execs() {
    let mut cache = ProcessCache::default();
    cache.exec(GONE, &exec_facts(b"OTEL_SERVICE_NAME=parent\0", true));
    cache.fork(GONE, GONE + 1, "worker");
    let child = cache.get(GONE + 1, "worker").clone();
    assert_eq!(child.pid, GONE + 1);
    assert_eq!(child.comm, "worker");
    assert_eq!(child.service_name.as_deref(), Some("parent"));
    assert!(child.identity_known());
    // A fork before the parent is known resolves at the first lookup.
    cache.fork(GONE + 2, GONE + 3, "late");
    cache.exec(GONE + 2, &exec_facts(b"OTEL_SERVICE_NAME=p2\0", true));
    assert_eq!(
        cache.get(GONE + 3, "late").service_name.as_deref(),
        Some("p2")
    );
}

#[test]
fn exited_processes_stay_known_for_verdicts_then_go() {
    let mut cache = ProcessCache::default();
    cache.exec(GONE, &exec_facts(b"A=b\0", true));
    cache.exit(GONE);
    cache.sweep(|_| false);
    assert!(
        cache.cached(GONE).is_some(),
        "kept for verdicts still to come"
    );
    // A /proc lookup of a process that was never seen alive is gone at the sweep.
    let _info = cache.get(GONE + 9, "x");
    cache.sweep(|_| false);
    assert!(cache.cached(GONE + 9).is_none());
}

#[test]
fn environment_facts() {
    let f = EnvFacts::parse(b"OTEL_RESOURCE_ATTRIBUTES=a=b,service.name=svc\0X=1\0");
    assert_eq!(
        f,
        EnvFacts {
            otel_env: true,
            service_name: Some("svc".into()),
            sdk_settings: SdkSettings::default(),
        }
    );
    // OTEL_SERVICE_NAME wins over the resource attribute, in any order.
    let f =
        EnvFacts::parse(b"OTEL_SERVICE_NAME=named\0OTEL_RESOURCE_ATTRIBUTES=service.name=other\0");
    assert_eq!(f.service_name.as_deref(), Some("named"));
    let f = EnvFacts::parse(b"NOT_OTEL_X=1\0OTEL\0=\0\0");
    assert_eq!(f, EnvFacts::default());
    // Garbage never panics.
    let _f = EnvFacts::parse(&[0xff, b'=', 0, b'=', b'=']);
}

#[test]
fn span_export_settings_and_a_java_agent() {
    let f = EnvFacts::parse(
        b"OTEL_TRACES_EXPORTER= Console \0OTEL_SDK_DISABLED=TRUE\0\
          JAVA_TOOL_OPTIONS=-Xmx1g -javaagent:/otel/opentelemetry-javaagent.jar\0\
          SECRET=-javaagent:/x/opentelemetry-javaagent-9.jar\0",
    );
    assert_eq!(
        f.sdk_settings,
        SdkSettings {
            traces_exporter: Some("console".into()),
            sdk_disabled: true,
            java_agent: Some("opentelemetry-javaagent.jar".into()),
        }
    );
    // JAVA_TOOL_OPTIONS alone is not an OTEL_* variable.
    let f = EnvFacts::parse(b"JDK_JAVA_OPTIONS=-javaagent:/a/opentelemetry-javaagent.jar\0");
    assert!(!f.otel_env);
    assert_eq!(
        f.sdk_settings.java_agent.as_deref(),
        Some("opentelemetry-javaagent.jar")
    );
}

#[test]
fn the_table_is_bounded() {
    let mut cache = ProcessCache::default();
    for i in 0..(MAX_PROCESSES as u32 + 50) {
        cache.exec(GONE + i, &exec_facts(b"", true));
    }
    assert_eq!(cache.len(), MAX_PROCESSES);
    assert_eq!(cache.evicted, 50);
}

//! The DaemonSet's capability set (deploy/kubernetes/daemonset.yaml, read here so the two cannot
//! drift) is enough: as root with only those capabilities the agent attaches, captures, and reads
//! /proc of another user's process. With fewer it fails clearly or says what it cannot know.

use std::{process::Command, time::Duration};

use tracegap_tests::{
    agent_command, findings_of, kinds_of, run_client, Agent, ChildGuard, HttpServer, RECEIVERS_OFF,
};

/// `capabilities.add` of the agent container in the DaemonSet.
fn daemonset_capabilities() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the DaemonSet");
    let ds: serde_yaml::Value = serde_yaml::from_str(&text).expect("parse the DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("capability name").to_ascii_lowercase())
        .collect()
}

/// `setpriv` keeping uid 0 but only `caps` (permitted, effective, inheritable, ambient, bounding).
fn setpriv(caps: &[String]) -> Vec<String> {
    let list: String = caps.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ]
}

/// curl as user nobody, so reading its /proc entries needs the ptrace/DAC capabilities.
fn curl_as_nobody(url: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        "10",
    ])
    .arg(url)
    .env("OTEL_SERVICE_NAME", "caps-check");
    cmd
}

#[test]
fn daemonset_capabilities_are_enough() {
    let caps = daemonset_capabilities();
    assert!(
        caps.iter().all(|c| c != "sys_admin"),
        "the DaemonSet must not need SYS_ADMIN: {caps:?}"
    );
    let server = HttpServer::start(Duration::from_millis(300));
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&wrapper, &RECEIVERS_OFF);
    let effective =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    assert!(
        effective
            .lines()
            .any(|l| l.starts_with("CapEff:") && !l.ends_with("1ffffffffff")),
        "the agent runs with reduced capabilities:\n{effective}"
    );
    let client = run_client(&mut curl_as_nobody(&server.url("/caps")));
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, client),
        ["missing_traceparent"],
        "{lines:?}"
    );
    let f = findings_of(&lines, client)[0];
    assert_eq!(
        f["service_name"], "caps-check",
        "another user's environ was read: {f}"
    );
    assert_eq!(f["exe"], "/usr/bin/curl", "{f}");
}

#[test]
fn without_perfmon_the_agent_fails_clearly() {
    let caps: Vec<String> = daemonset_capabilities()
        .into_iter()
        .filter(|c| c != "perfmon")
        .collect();
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let out = agent_command(&wrapper, &RECEIVERS_OFF)
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("CAP_PERFMON"),
        "the error names the missing capability:\n{stderr}"
    );
}

/// SYS_PTRACE and DAC_READ_SEARCH are what /proc needs to show other users' environments.
/// The agent needs /proc only for processes that started before it: the kernel's exec record
/// tells it who every later process is.
#[test]
fn without_ptrace_only_other_users_processes_older_than_the_agent_are_unknown() {
    let caps: Vec<String> = daemonset_capabilities()
        .into_iter()
        .filter(|c| c != "sys_ptrace" && c != "dac_read_search")
        .collect();
    let server = HttpServer::start(Duration::from_millis(300));
    // Started before the agent (no exec record), its request made after the agent attached.
    let mut older = ChildGuard::spawn(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args([
                "/usr/bin/python3",
                "-c",
                "import sys, time, urllib.request; time.sleep(3); \
                 urllib.request.urlopen(sys.argv[1]).read()",
                &server.url("/caps-older"),
            ])
            .env("OTEL_SERVICE_NAME", "caps-older"),
    );
    let wrapper = setpriv(&caps);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let agent = Agent::start_wrapped(&wrapper, &RECEIVERS_OFF);
    let newer = run_client(&mut curl_as_nobody(&server.url("/caps")));
    older.wait_success(Duration::from_secs(20));
    let older = older.pid();
    agent.wait_for(
        "the newer client's verdict",
        Duration::from_secs(10),
        |lines| !kinds_of(lines, newer).is_empty(),
    );
    let lines = agent.stop();
    // The older one's environment is unreadable: instrumented or not is unknown, no verdict.
    assert_eq!(kinds_of(&lines, older), Vec::<String>::new(), "{lines:?}");
    let counters = tracegap_tests::last_counters(&lines);
    assert!(
        counters["agent"]["process_unknown"].as_u64() >= Some(1),
        "{counters}"
    );
    // The newer one was told by its exec record.
    let found = findings_of(&lines, newer);
    assert_eq!(
        kinds_of(&lines, newer),
        ["missing_traceparent"],
        "{lines:?}"
    );
    assert_eq!(found[0]["service_name"], "caps-check", "{}", found[0]);
}

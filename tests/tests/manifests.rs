//! The Kubernetes manifests in deploy/kubernetes parse and stay least-privilege, and the image
//! build installs what `cargo xtask setup` installs. Plain file checks: no cluster, no root.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::Deserialize as _;
use serde_yaml::Value;

/// The capabilities the agent may add (deploy/README-section.md says why each is needed).
const ALLOWED_CAPS: &[&str] = &["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];
/// Host paths the agent may need; anything else mounted from the host is needless exposure.
/// Today it opens none: raw tracepoints and uprobe_multi links need no tracefs, nothing is
/// pinned, and cgroups are read through /proc.
const ALLOWED_HOST_PATHS: &[&str] = &["/sys/fs/bpf", "/sys/fs/cgroup"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn manifest_dir() -> PathBuf {
    repo_root().join("deploy/kubernetes")
}

/// Every .yaml/.yml file of the directory, by file name.
fn yaml_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(manifest_dir())
        .expect("deploy/kubernetes exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).expect("readable manifest");
            (name, text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests found");
    files
}

fn parse_all(name: &str, text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// All documents of every file except kustomization.yaml.
fn resources() -> Vec<Value> {
    yaml_files()
        .iter()
        .filter(|(name, _)| name != "kustomization.yaml")
        .flat_map(|(name, text)| parse_all(name, text))
        .collect()
}

fn of_kind(kind: &str) -> Vec<Value> {
    resources()
        .into_iter()
        .filter(|doc| doc["kind"].as_str() == Some(kind))
        .collect()
}

fn the_daemonset() -> Value {
    let mut sets = of_kind("DaemonSet");
    assert_eq!(sets.len(), 1, "exactly one DaemonSet");
    sets.remove(0)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|seq| {
            seq.iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn containers(pod_spec: &Value) -> Vec<Value> {
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|key| pod_spec[*key].as_sequence())
        .flatten()
        .cloned()
        .collect()
}

#[test]
fn every_document_parses_and_is_a_kubernetes_object() {
    for (name, text) in yaml_files() {
        let docs = parse_all(&name, &text);
        assert!(!docs.is_empty(), "{name}: no document");
        for doc in docs {
            assert!(doc["apiVersion"].is_string(), "{name}: no apiVersion");
            assert!(doc["kind"].is_string(), "{name}: no kind");
        }
    }
}

#[test]
fn kustomization_lists_every_other_file() {
    let files = yaml_files();
    let (_, text) = files
        .iter()
        .find(|(name, _)| name == "kustomization.yaml")
        .expect("kustomization.yaml");
    let kustomization = parse_all("kustomization.yaml", text).remove(0);
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = files
        .iter()
        .map(|(name, _)| name.clone())
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs files");
}

#[test]
fn daemonset_shares_host_pid_without_privilege() {
    let ds = the_daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"].as_bool(), Some(true), "hostPID");
    assert_ne!(pod["hostNetwork"].as_bool(), Some(true), "no hostNetwork");
    let containers = containers(pod);
    assert!(!containers.is_empty());
    for c in &containers {
        let name = c["name"].as_str().unwrap_or("?");
        let sc = &c["securityContext"];
        assert_ne!(sc["privileged"].as_bool(), Some(true), "{name}: privileged");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}: readOnlyRootFilesystem"
        );
        assert_eq!(
            strings(&sc["capabilities"]["drop"]),
            ["ALL"],
            "{name}: drop ALL"
        );
        let added = strings(&sc["capabilities"]["add"]);
        for cap in &added {
            assert!(
                ALLOWED_CAPS.contains(&cap.as_str()),
                "{name}: capability {cap} is not in {ALLOWED_CAPS:?}"
            );
        }
        assert!(added.iter().any(|c| c == "BPF"), "{name}: needs BPF");
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{name}: memory limit"
        );
        assert!(
            c["resources"]["limits"]["cpu"].is_string(),
            "{name}: cpu limit"
        );
    }
}

#[test]
fn daemonset_mounts_only_host_paths_the_agent_opens() {
    let ds = the_daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let host_volumes: Vec<(String, String)> = pod["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let path = v["hostPath"]["path"].as_str()?;
            Some((v["name"].as_str()?.to_owned(), path.to_owned()))
        })
        .collect();
    for (_, path) in &host_volumes {
        assert!(
            ALLOWED_HOST_PATHS.contains(&path.as_str()),
            "hostPath {path} is not one the agent opens"
        );
    }
    for c in containers(pod) {
        for mount in c["volumeMounts"].as_sequence().into_iter().flatten() {
            let name = mount["name"].as_str().unwrap_or_default();
            if host_volumes.iter().any(|(v, _)| v == name) {
                assert_eq!(
                    mount["readOnly"].as_bool(),
                    Some(true),
                    "host volume {name} mounted writable"
                );
            }
        }
    }
}

#[test]
fn daemonset_args_use_defined_variables_and_listen_in_cluster() {
    let ds = the_daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let configmaps = of_kind("ConfigMap");
    for c in containers(pod) {
        assert_eq!(strings(&c["command"]), ["/usr/local/bin/tracegap"]);
        let mut defined: BTreeSet<String> = c["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|e| e["name"].as_str().map(str::to_owned))
            .collect();
        for source in c["envFrom"].as_sequence().into_iter().flatten() {
            let cm_name = source["configMapRef"]["name"]
                .as_str()
                .expect("envFrom configMapRef");
            let cm = configmaps
                .iter()
                .find(|cm| cm["metadata"]["name"].as_str() == Some(cm_name))
                .unwrap_or_else(|| panic!("ConfigMap {cm_name} is not in the manifests"));
            let data = cm["data"].as_mapping().expect("ConfigMap data");
            defined.extend(data.keys().filter_map(|k| k.as_str().map(str::to_owned)));
            // Applications in other pods reach the receivers: loopback would be unreachable.
            for key in ["TRACEGAP_OTLP_GRPC_LISTEN", "TRACEGAP_OTLP_HTTP_LISTEN"] {
                let value = cm["data"][key].as_str().unwrap_or_default();
                assert!(value.starts_with("0.0.0.0:"), "{key} = {value:?}");
            }
        }
        assert!(defined.contains("NODE_NAME"), "NODE_NAME for the pod watch");
        for arg in strings(&c["args"]) {
            let mut rest = arg.as_str();
            while let Some(start) = rest.find("$(") {
                let after = &rest[start + 2..];
                let end = after.find(')').expect("closed $(");
                let var = &after[..end];
                assert!(defined.contains(var), "arg {arg:?} uses undefined {var}");
                rest = &after[end..];
            }
        }
    }
}

#[test]
fn rbac_grants_only_reads_of_pods() {
    let roles: Vec<Value> = of_kind("ClusterRole")
        .into_iter()
        .chain(of_kind("Role"))
        .collect();
    assert!(!roles.is_empty(), "a ClusterRole for the pod watch");
    for role in roles {
        for rule in role["rules"].as_sequence().expect("rules") {
            assert_eq!(strings(&rule["apiGroups"]), [""], "core group only");
            assert_eq!(strings(&rule["resources"]), ["pods"], "pods only");
            assert!(rule["nonResourceURLs"].is_null(), "no nonResourceURLs");
            assert!(rule["resourceNames"].is_null() || rule["resourceNames"].is_sequence());
            let verbs: BTreeSet<String> = strings(&rule["verbs"]).into_iter().collect();
            let allowed: BTreeSet<String> = ["get", "list", "watch"]
                .map(str::to_owned)
                .into_iter()
                .collect();
            assert!(verbs.is_subset(&allowed), "verbs {verbs:?}");
        }
    }
}

#[test]
fn otlp_service_is_node_local() {
    let services = of_kind("Service");
    assert_eq!(services.len(), 1);
    assert_eq!(
        services[0]["spec"]["internalTrafficPolicy"].as_str(),
        Some("Local")
    );
}

/// The image must be built with the toolchain `cargo xtask setup` installs, or the eBPF object
/// cannot be built in it: every package of setup.rs's APT_PACKAGES appears in the Dockerfile.
#[test]
fn dockerfile_installs_what_setup_installs() {
    let root = repo_root();
    let setup = std::fs::read_to_string(root.join("xtask/src/setup.rs")).expect("setup.rs");
    let list = setup
        .split_once("const RUN_APT_PACKAGES: &[&str] = &[")
        .and_then(|(_, rest)| rest.split_once("];"))
        .map(|(list, _)| list)
        .expect("RUN_APT_PACKAGES in setup.rs");
    let packages: Vec<&str> = list
        .split(',')
        .map(|p| p.trim().trim_matches('"'))
        .filter(|p| !p.is_empty())
        .collect();
    assert!(packages.contains(&"rustc-web"), "parsed {packages:?}");
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    let words: BTreeSet<&str> = dockerfile.split_whitespace().collect();
    for pkg in packages {
        assert!(words.contains(pkg), "Dockerfile does not install {pkg}");
    }
    for needed in [
        "bpf-linker",
        "LLVM_PREFIX=/usr/lib/llvm-22",
        "TRACEGAP_REQUIRE_EBPF=1",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed}");
    }
}

//! Container and pod identity from a process's cgroup path.
//!
//! The kernel shows a process's cgroups in `/proc/<pid>/cgroup`, one line per hierarchy:
//! `N:controller[,controller]:/path` for cgroup v1, `0::/path` for the v2 unified hierarchy; hybrid
//! hosts (like this project's machines) show both. Container runtimes name the leaf cgroup after
//! the container id, and the kubelet names the pod cgroup after the pod UID, so the path alone is
//! enough to attribute a process to a container and, usually, to a pod.
//!
//! Layouts recognised (the container id is 64 lowercase hex characters in every runtime):
//! - systemd cgroup driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
//!   with underscores>.slice/cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`;
//!   `/system.slice/docker-<id>.scope` for plain docker; `libpod-<id>.scope` for podman.
//! - cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`, `/kubepods/pod<uid>/crio-<id>`,
//!   `/docker/<id>`.
//!
//! Everything here is pure except [`read_container_info`], which reads one `/proc` file.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Length of a container id as docker, containerd, CRI-O and podman print it in full.
const CONTAINER_ID_LEN: usize = 64;

/// The container a process runs in, as far as its cgroup path tells.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerInfo {
    /// Full 64-character hex id, as in `containerd://<id>` of the pod's container statuses.
    pub container_id: String,
    /// `"containerd"`, `"cri-o"`, `"docker"` or `"podman"`, when the path names it. The cgroupfs
    /// driver under Kubernetes names no runtime (`/kubepods/.../pod<uid>/<id>`).
    pub runtime: Option<&'static str>,
    /// Pod UID with dashes (the systemd driver writes it with underscores), when under kubepods.
    pub pod_uid: Option<String>,
}

/// Errors of [`read_container_info`].
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Reads `/proc/<pid>/cgroup` and parses it. `Ok(None)` means the process is not in a container
/// (or in one whose layout is unknown); a process that exited gives `Err`.
pub fn read_container_info(pid: u32) -> Result<Option<ContainerInfo>, CgroupError> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let contents =
        std::fs::read_to_string(&path).map_err(|source| CgroupError::Read { path, source })?;
    Ok(parse_cgroup_file(&contents))
}

/// Parses the whole contents of `/proc/<pid>/cgroup`.
///
/// The v2 line (`0::/path`) is tried first, then the v1 lines in order. On a hybrid host a
/// container runtime may have placed the process only in the v1 hierarchies (the v2 line then
/// says `/` or a systemd session path), so every line is looked at. A result carrying a pod UID
/// wins over one without: with the systemd driver some v1 controllers can sit at a shallower path.
pub fn parse_cgroup_file(contents: &str) -> Option<ContainerInfo> {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in contents.lines() {
        // `splitn(3)`: the path itself may contain ':' (it never does for the layouts we know,
        // but cutting there would silently give a wrong id).
        let mut fields = line.splitn(3, ':');
        let (Some(hierarchy), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if hierarchy == "0" && controllers.is_empty() {
            v2.push(path);
        } else {
            v1.push(path);
        }
    }
    let mut first = None;
    for info in v2.into_iter().chain(v1).filter_map(parse_cgroup_path) {
        if info.pod_uid.is_some() {
            return Some(info);
        }
        first.get_or_insert(info);
    }
    first
}

/// Parses one cgroup path (the third field of a `/proc/<pid>/cgroup` line).
///
/// The deepest segment that names a container wins: processes can sit in a sub-cgroup of their
/// container (systemd inside a container, or runtimes that add an `init` leaf).
pub fn parse_cgroup_path(path: &str) -> Option<ContainerInfo> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (index, container_id, runtime) =
        segments.iter().enumerate().rev().find_map(|(i, segment)| {
            let parent = i.checked_sub(1).and_then(|p| segments.get(p)).copied();
            container_segment(segment, parent).map(|(id, runtime)| (i, id, runtime))
        })?;
    let in_kubepods = segments
        .get(..index)
        .unwrap_or_default()
        .iter()
        .any(|s| s.starts_with("kubepods") || s.starts_with("kubelet-kubepods"));
    let pod_uid = if in_kubepods {
        segments
            .get(..index)
            .unwrap_or_default()
            .iter()
            .rev()
            .find_map(|s| pod_uid_segment(s))
    } else {
        None
    };
    Some(ContainerInfo {
        container_id: container_id.to_owned(),
        runtime,
        pod_uid,
    })
}

/// Recognises a segment that names a container: `<prefix><id>[.scope]` or a bare id.
fn container_segment<'a>(
    segment: &'a str,
    parent: Option<&str>,
) -> Option<(&'a str, Option<&'static str>)> {
    let name = segment.strip_suffix(".scope").unwrap_or(segment);
    // conmon (CRI-O's and podman's monitor process) gets its own cgroup named after the
    // container; it is not the container, so `crio-conmon-<id>` and `libpod-conmon-<id>` must
    // not match: their remainder after the prefix is not hex, which `is_container_id` rejects.
    const PREFIXES: &[(&str, &str)] = &[
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ];
    for (prefix, runtime) in PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            return is_container_id(id).then_some((id, Some(*runtime)));
        }
    }
    if is_container_id(name) {
        // cgroupfs driver: docker puts containers under `/docker/<id>`; under kubepods the
        // runtime is not named in the path.
        let runtime = (parent == Some("docker")).then_some("docker");
        return Some((name, runtime));
    }
    None
}

/// Pod UID from `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd driver) or
/// `pod<uid>` (cgroupfs driver), normalised to dashes.
fn pod_uid_segment(segment: &str) -> Option<String> {
    let raw = if let Some(slice) = segment.strip_suffix(".slice") {
        // `kubepods-pod<uid>.slice` (guaranteed QoS) or `kubepods-burstable-pod<uid>.slice`;
        // kind nodes nest it as `kubelet-kubepods-besteffort-pod<uid>.slice`.
        slice.rsplit_once("-pod")?.1
    } else {
        segment.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

fn is_container_id(s: &str) -> bool {
    s.len() == CONTAINER_ID_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A pod UID is a UUID (36 characters with dashes); static pods use the 32-hex config hash.
fn is_pod_uid(s: &str) -> bool {
    let hex_or_dash = s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let dashes = s.bytes().filter(|&b| b == b'-').count();
    hex_or_dash && ((s.len() == 36 && dashes == 4) || (s.len() == 32 && dashes == 0))
}

/// A cgroup v2 directory's inode number (what `bpf_get_current_cgroup_id` returns in the
/// kernel's exec records) → its path under the cgroup2 mount, for processes that are gone from
/// /proc by the time their record is read. Walked lazily, again at most every
/// [`REWALK_AFTER`] on a miss. An agent in a cgroup namespace of its own sees only its subtree:
/// other ids then stay unknown (the container of a process that is gone is then unknown).
#[derive(Default)]
pub struct CgroupPaths {
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

/// Least time between two walks of the cgroup tree.
const REWALK_AFTER: Duration = Duration::from_secs(1);
/// Directories visited per walk at most.
const MAX_CGROUP_DIRS: usize = 65_536;

impl CgroupPaths {
    /// The path (`/kubepods/...`, as in /proc/<pid>/cgroup) of cgroup `id`.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(path) = self.by_id.get(&id) {
            return Some(path.clone());
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < REWALK_AFTER) {
            return None;
        }
        self.walk();
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = cgroup2_mount() else {
            return;
        };
        self.by_id.clear();
        let mut stack = vec![(root.clone(), String::from("/"))];
        let mut visited = 0;
        while let Some((dir, path)) = stack.pop() {
            visited += 1;
            if visited > MAX_CGROUP_DIRS {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                self.by_id.insert(meta.ino(), path.clone());
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" {
                        format!("/{name}")
                    } else {
                        format!("{path}/{name}")
                    };
                    stack.push((entry.path(), child));
                }
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid host).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next(), fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID2: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const UID: &str = "8d2a6f4e-1b7c-4e3a-9f0d-5c6b7a8e9f01";
    const UID_US: &str = "8d2a6f4e_1b7c_4e3a_9f0d_5c6b7a8e9f01";

    /// Expected (container id, runtime, pod uid); `None` when the path names no container.
    type Expected = Option<(&'static str, Option<&'static str>, Option<&'static str>)>;

    /// (path, expected). Shapes taken from real hosts; ids replaced by fixed ones.
    fn samples() -> Vec<(String, Expected)> {
        vec![
            // containerd, systemd driver, cgroup v2 (GKE, EKS AL2023, kubeadm on Ubuntu 22.04).
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope"),
                Some((ID, Some("containerd"), Some(UID))),
            ),
            // Guaranteed QoS: no QoS slice.
            (
                format!("/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope"),
                Some((ID, Some("containerd"), Some(UID))),
            ),
            // BestEffort on CRI-O (OpenShift).
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"),
                Some((ID, Some("cri-o"), Some(UID))),
            ),
            // CRI-O's conmon cgroup is not the container.
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-conmon-{ID}.scope"),
                None,
            ),
            // dockershim / cri-dockerd with the systemd driver.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/docker-{ID}.scope"),
                Some((ID, Some("docker"), Some(UID))),
            ),
            // kind node (kubelet nested in a container).
            (
                format!("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"),
                Some((ID, Some("containerd"), Some(UID))),
            ),
            // cgroupfs driver, cgroup v1 (older kubeadm, k3s default), runtime not named.
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                Some((ID, None, Some(UID))),
            ),
            (format!("/kubepods/pod{UID}/{ID}"), Some((ID, None, Some(UID)))),
            // CRI-O with cgroupfs.
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{ID}"),
                Some((ID, Some("cri-o"), Some(UID))),
            ),
            // Static pod: the UID is the 32-hex config hash.
            (
                format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"),
                Some((ID, None, Some("0123456789abcdef0123456789abcdef"))),
            ),
            // Plain docker, cgroupfs driver (v1) and systemd driver (v2).
            (format!("/docker/{ID}"), Some((ID, Some("docker"), None))),
            (format!("/system.slice/docker-{ID}.scope"), Some((ID, Some("docker"), None))),
            // Podman rootful and rootless.
            (format!("/machine.slice/libpod-{ID}.scope"), Some((ID, Some("podman"), None))),
            (
                format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
                Some((ID, Some("podman"), None)),
            ),
            (format!("/machine.slice/libpod-conmon-{ID}.scope"), None),
            // Systemd running inside a container: the deepest container segment wins.
            (
                format!("/system.slice/docker-{ID}.scope/init.scope"),
                Some((ID, Some("docker"), None)),
            ),
            (format!("/docker/{ID2}/docker/{ID}"), Some((ID, Some("docker"), None))),
            // Negative samples: host processes.
            ("/".to_owned(), None),
            ("/init.scope".to_owned(), None),
            ("/user.slice/user-1000.slice/session-2.scope".to_owned(), None),
            ("/user.slice/user-1000.slice/user@1000.service/app.slice/dbus.service".to_owned(), None),
            ("/system.slice/docker.service".to_owned(), None),
            ("/system.slice/containerd.service".to_owned(), None),
            ("/system.slice/kubelet.service".to_owned(), None),
            // The pod cgroup itself (pause container processes sit in their own leaf).
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"),
                None,
            ),
            // Too short / not hex: not an id.
            ("/docker/0123456789ab".to_owned(), None),
            (format!("/system.slice/docker-{}.scope", "g".repeat(64)), None),
        ]
    }

    #[test]
    fn parses_real_world_paths() {
        let samples = samples();
        assert!(samples.len() >= 15);
        for (path, expected) in samples {
            let got = parse_cgroup_path(&path);
            let expected = expected.map(|(id, runtime, uid)| ContainerInfo {
                container_id: id.to_owned(),
                runtime,
                pod_uid: uid.map(str::to_owned),
            });
            assert_eq!(got, expected, "path {path}");
        }
    }

    #[test]
    fn parses_v2_only_file() {
        let file = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope\n"
        );
        let info = parse_cgroup_file(&file).expect("container");
        assert_eq!(info.container_id, ID);
        assert_eq!(info.runtime, Some("containerd"));
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn parses_v1_file() {
        let file = format!(
            "12:pids:/kubepods/burstable/pod{UID}/{ID}\n\
             11:cpu,cpuacct:/kubepods/burstable/pod{UID}/{ID}\n\
             3:memory:/kubepods/burstable/pod{UID}/{ID}\n\
             1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n"
        );
        let info = parse_cgroup_file(&file).expect("container");
        assert_eq!(info.container_id, ID);
        assert_eq!(info.runtime, None);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn hybrid_host_uses_v1_when_v2_is_root() {
        // Docker on a hybrid host (this project's machines mount v2 at /sys/fs/cgroup/unified).
        let file = format!(
            "12:devices:/docker/{ID}\n\
             1:name=systemd:/docker/{ID}\n\
             0::/\n"
        );
        let info = parse_cgroup_file(&file).expect("container");
        assert_eq!(info.container_id, ID);
        assert_eq!(info.runtime, Some("docker"));
    }

    #[test]
    fn prefers_line_with_pod_uid() {
        let file = format!(
            "0::/{ID}\n\
             5:memory:/kubepods/pod{UID}/{ID}\n"
        );
        let info = parse_cgroup_file(&file).expect("container");
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn host_process_file_is_none() {
        let file = "12:pids:/user.slice/user-0.slice/session-1.scope\n\
                    1:name=systemd:/user.slice/user-0.slice/session-1.scope\n\
                    0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(parse_cgroup_file(file), None);
        assert_eq!(parse_cgroup_file(""), None);
        assert_eq!(parse_cgroup_file("garbage without colons\n"), None);
    }

    #[test]
    fn reads_own_process() {
        // The test process exists, so reading succeeds whatever its cgroup says.
        let pid = std::process::id();
        read_container_info(pid).expect("own /proc/<pid>/cgroup is readable");
        assert!(read_container_info(u32::MAX).is_err());
    }
}

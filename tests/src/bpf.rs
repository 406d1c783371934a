//! The kernel's view of the agent's programs, through bpftool: which are loaded and by whom.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Program ids `bpftool` lists, with names and owning pids.
pub fn bpf_programs() -> Vec<(u64, String, Vec<u64>)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool (apt package bpftool)");
    assert!(out.status.success(), "bpftool failed: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    v.as_array()
        .map(|progs| {
            progs
                .iter()
                .map(|p| {
                    let pids = p["pids"]
                        .as_array()
                        .map(|a| a.iter().filter_map(|x| x["pid"].as_u64()).collect())
                        .unwrap_or_default();
                    (
                        p["id"].as_u64().unwrap_or(0),
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        pids,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The ids of the programs the agent `pid` holds: those bpftool names with their holder's pid
/// when it can (bpftool built with skeleton support), else the `tracegap_*` programs that
/// appeared since `before` was listed. (The kernel truncates names to 15 characters; all of
/// them start with "tracegap_".)
pub fn programs_of(pid: u32, before: &[u64]) -> Vec<u64> {
    let ours = |(id, name, pids): &(u64, String, Vec<u64>)| {
        name.starts_with("tracegap_")
            && if pids.is_empty() {
                !before.contains(id)
            } else {
                pids.contains(&u64::from(pid))
            }
    };
    bpf_programs()
        .into_iter()
        .filter(ours)
        .map(|(id, _, _)| id)
        .collect()
}

/// Which of `ids` are still loaded.
pub fn still_loaded(ids: &[u64]) -> Vec<u64> {
    bpf_programs()
        .into_iter()
        .map(|(id, _, _)| id)
        .filter(|id| ids.contains(id))
        .collect()
}

#[track_caller]
pub fn assert_unloaded_within(ids: &[u64], timeout: Duration, how: &str) {
    let started = Instant::now();
    loop {
        let left = still_loaded(ids);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < timeout,
            "after {how}, programs {left:?} were still loaded {timeout:?} later"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

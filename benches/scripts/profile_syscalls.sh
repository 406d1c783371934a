#!/bin/bash
# Where a hooked syscall's time goes with the agent attached: each loop of tracegap-bench under
# `perf record -e cpu-clock` (the project's VMs have no hardware counters), every symbol's share
# of samples times the loop's measured ns per call. Run as root after `cargo xtask bench`
# (which builds both binaries); loopback and /dev/null only.
# Usage: benches/scripts/profile_syscalls.sh [KIND...]   (default: write8 write64 read64 sendto-other)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
agent=$root/target/release/tracegap
bench=$root/target/release/tracegap-bench
work=$(mktemp -d)
"$agent" --output json --otlp-grpc-listen off --otlp-http-listen off >"$work/agent.out" 2>"$work/agent.err" &
agent_pid=$!
trap 'kill "$agent_pid" 2>/dev/null; wait "$agent_pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 120); do grep -qs attached "$work/agent.err" && break; sleep 0.25; done
grep -q attached "$work/agent.err" || { cat "$work/agent.err" >&2; exit 1; }
for kind in "${@:-write8 write64 read64 sendto-other}"; do
  for k in $kind; do
    perf record -q -o "$work/perf.$k" -e cpu-clock -F 10000 -- \
      "$bench" syscall-loop --kind "$k" --count 3000000 >"$work/$k.json" 2>/dev/null
    ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ns_per_call"])' "$work/$k.json")
    printf '== %s: %.0f ns per call with the agent\n' "$k" "$ns"
    perf report -i "$work/perf.$k" --no-children --comm tracegap-bench --sort sym --stdio 2>/dev/null |
      grep -E '^ +[0-9]' | head -14 |
      awk -v ns="$ns" '{p=$1; sub("%","",p); printf "  %6.1f ns  %s\n", p*ns/100, $3}'
  done
done

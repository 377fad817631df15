#!/usr/bin/env bash
# Compares two builds of a kernel by the CPU cycles spent in it, not by wall time: on a shared host
# whose speed drifts by ±25% between minutes, cycle samples in the kernel's own functions move far
# less than its wall time (docs/performance.md §3.1 uses it for the tile and decoding experiments).
#
#   scripts/kernel_cycles.sh PROBE_A PROBE_B PROBE_ARG SYMBOL_REGEX [PAIRS]
#
# PROBE_A/B: two kernel_probe binaries (cargo build --release --example kernel_probe, copied aside
# before and after the change); PROBE_ARG: its filter (tqprefill, affprefill, routerprefill, ...;
# set AFF_N, TQ_N, ROUTER_N in the environment as usual); SYMBOL_REGEX: an extended regex over the
# symbol names whose samples are summed (e.g. 'bf_rows<.*tq_rows_bf'); PAIRS: alternating runs
# (default 3). Prints, per run, the summed samples (one per million user-mode cycles) and the probe's
# own line. Needs `perf`; where the virtual machine exposes no cycle counter (the project's Zen 5
# machines), perf samples the cpu-clock event instead (time on the CPU, 1 ms per sample): still the
# time spent in those functions, but a slower host phase inflates it as it inflates wall time.
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
a=$1 b=$2 arg=$3 re=$4 pairs=${5:-3}
command -v perf >/dev/null || { echo "kernel_cycles: perf is not installed" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 "$pairs"); do
  for side in A B; do
    bin=$a
    [ "$side" = B ] && bin=$b
    perf record -q -e cycles:u -c 1000000 -o "$tmp/perf.data" -- "$bin" "$arg" >"$tmp/out.txt" 2>&1
    samples=$(perf report -i "$tmp/perf.data" --stdio -n --sort sym 2>/dev/null |
      grep -E "$re" | awk '{s += $2} END {print s + 0}')
    printf 'pair %d %s  %6d samples  %s\n' "$i" "$side" "$samples" "$(tail -n 1 "$tmp/out.txt")"
  done
done

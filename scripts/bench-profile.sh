#!/usr/bin/env bash
# Profiles `runner submit` on the overhead workload (every limit off, generation 0 ms, N one-image
# 512x512 items) against `runner sim` in its own process.
#
#   scripts/bench-profile.sh perf   [N]   # on-CPU samples: perf record -e cpu-clock, DWARF stacks
#   scripts/bench-profile.sh strace [N]   # system calls: count and wall time in each (strace -f -c -w)
#   scripts/bench-profile.sh offcpu [N]   # where threads wait: perf sched is often unavailable in
#                                         # VMs, so this samples thread states from /proc instead
#   scripts/bench-profile.sh rss    [N]   # resident memory over time, beside the simulator's
#                                         # submit and download counts (every 0.5 s)
#   scripts/bench-profile.sh time   [N]   # one run under /usr/bin/time: wall, user, sys, peak RSS
#                                         # (for A/B runs of two builds: RUNNER=path/to/runner)
#
# N defaults to 2000. Needs target/release/runner (cargo build --release), or RUNNER. Output goes to
# $OUT (default: a temp dir, printed); the temp store and archive are removed at the end.
set -euo pipefail

mode=${1:-perf}
n=${2:-2000}
root=$(cd "$(dirname "$0")/.." && pwd)
runner=${RUNNER:-$root/target/release/runner}
[ -x "$runner" ] || { echo "build it first: cargo build --release --bin runner" >&2; exit 2; }
work=$(mktemp -d /tmp/bench-profile.XXXXXX)
out=${OUT:-$work/out}
mkdir -p "$out"
echo "work dir: $work, reports in $out" >&2

cat > "$work/job.yaml" <<EOF
batch: bench
max_items: $n
sizes: [512x512]
image_num: 1
repeat: $n
prompts: ["基准图35"]
EOF

"$runner" sim --addr 127.0.0.1:0 --unlimited --gen-ms 0..0 --seed 1 > "$work/sim.out" 2> "$work/sim.err" &
sim_pid=$!
cleanup() {
    kill "$sim_pid" 2> /dev/null || true
    wait "$sim_pid" 2> /dev/null || true
    rm -rf "$work/runner.db"* "$work/archive"
}
trap cleanup EXIT
for _ in $(seq 100); do
    grep -q listening "$work/sim.out" 2> /dev/null && break
    sleep 0.05
done
url=$(sed -n 's/^listening on //p' "$work/sim.out")

run=("$runner" submit "$work/job.yaml" --db "$work/runner.db" --archive "$work/archive"
    --base-url "$url" --submit-qps 0 --query-qps 0 --concurrency 100000 --downloads "${DOWNLOADS:-32}")
export EB_AK=sim-ak EB_SK=sim-sk

case "$mode" in
perf)
    perf record -e cpu-clock -F 997 --call-graph dwarf,32768 -o "$out/perf.data" -- "${run[@]}"
    perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio 2> /dev/null \
        | grep -v '^$' | head -120 > "$out/perf-flat.txt"
    perf report -i "$out/perf.data" --children --sort symbol --stdio -g none 2> /dev/null \
        | grep -v '^$' | head -150 > "$out/perf-children.txt"
    echo "flat profile: $out/perf-flat.txt; inclusive: $out/perf-children.txt" >&2
    ;;
strace)
    strace -f -c -w -o "$out/strace.txt" "${run[@]}"
    echo "system calls: $out/strace.txt" >&2
    cat "$out/strace.txt"
    ;;
offcpu)
    "${run[@]}" &
    pid=$!
    : > "$out/states.txt"
    while kill -0 "$pid" 2> /dev/null; do
        for t in /proc/"$pid"/task/*; do
            echo "$(cat "$t/comm" 2> /dev/null) $(awk '{print $3}' "$t/stat" 2> /dev/null) $(cat "$t/wchan" 2> /dev/null)"
        done >> "$out/states.txt" 2> /dev/null || true
        sleep 0.01
    done
    wait "$pid" || true
    sort "$out/states.txt" | uniq -c | sort -rn | head -30
    ;;
rss)
    "${run[@]}" 2> "$out/runner.err" &
    pid=$!
    start=$(date +%s.%N)
    echo "seconds rss_kib submits downloads" | tee "$out/rss.txt"
    while kill -0 "$pid" 2> /dev/null; do
        rss=$(awk '/^VmRSS/ {print $2}' /proc/"$pid"/status 2> /dev/null || true)
        stats=$(curl -s "$url/__sim/stats" || true)
        sub=$(grep -o '"submits":[0-9]*' <<< "$stats" | cut -d: -f2)
        dl=$(grep -o '"downloads":[0-9]*' <<< "$stats" | cut -d: -f2)
        echo "$(echo "$(date +%s.%N) - $start" | bc | xargs printf '%.1f') ${rss:-0} ${sub:-0} ${dl:-0}" | tee -a "$out/rss.txt"
        sleep 0.5
    done
    wait "$pid" || true
    ;;
time)
    /usr/bin/time -f "wall %e s, user %U s, sys %S s, peak RSS %M KiB" "${run[@]}" 2>&1 \
        | grep -E '^(finished|wall)'
    ;;
*)
    echo "unknown mode $mode: perf, strace, offcpu, rss or time" >&2
    exit 2
    ;;
esac

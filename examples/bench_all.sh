#!/bin/sh
# Runs every benchmark in BENCHMARKS.md and keeps the output, so the
# figures can be retaken on a quiet machine in one go:
#
#   sh examples/bench_all.sh [out-dir]      # default: bench-out/<date>
#
# Needs Envoy on PATH (or TEAL_ENVOY), and nginx and HAProxy for the
# peers (examples/bench_peers_setup.sh installs them). 50 file-based
# Envoys need fs.inotify.max_user_instances above 128: as root, this
# script raises it to 1024 for the run and puts the old value back.
# Takes about 30 minutes on 2 cores. Run nothing else meanwhile.
set -eu
cd "$(dirname "$0")/.."
OUT=${1:-bench-out/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
cargo build --release --examples --bin teal
B=target/release/examples
{
  echo "nproc: $(nproc)"
  grep -m1 'model name' /proc/cpuinfo || true
  uname -r
  rustc --version
  envoy --version 2>&1 | tail -1 || true
  nginx -v 2>&1 || true
  haproxy -v 2>&1 | head -1 || true
  uptime
} > "$OUT/machine.txt"

OLD=$(cat /proc/sys/fs/inotify/max_user_instances)
restore() { [ "$(id -u)" = 0 ] && sysctl -qw fs.inotify.max_user_instances="$OLD" || true; }
trap restore EXIT
[ "$(id -u)" = 0 ] && sysctl -qw fs.inotify.max_user_instances=1024 || true

for n in 1000 10000 50000; do
  "$B/bench_xds" --streams "$n" --pushes 5 | tee "$OUT/xds-$n.txt"
done
for n in 10000 50000; do
  "$B/bench_xds" --streams "$n" --pushes 3 --flip | tee "$OUT/xds-flip-$n.txt"
done
# Load reports: the same flips, 50 proxies per connection (each holds an
# ADS and a load stream), without reports, with Envoy's node in every
# report, and with the node in the first message only.
for n in 1000 10000; do
  for lrs in "" "--lrs" "--lrs --lrs-node first"; do
    "$B/bench_xds" --streams "$n" --per-conn 50 --pushes 3 --flip $lrs \
      | tee -a "$OUT/xds-lrs-$n.txt"
  done
done
"$B/bench_cli" --runs 100 | tee "$OUT/cli.txt"
STATE=$(mktemp -d "$OUT/cli-state.XXXXXX")
"$B/bench_cli" --runs 100 --state-dir "$STATE" | tee -a "$OUT/cli.txt"
for n in 1 10 20 50; do
  "$B/bench_flip" --envoys "$n" --flips 20 \
    --modes teal,envoy-file,envoy-file-teal-routes | tee "$OUT/flip-$n.txt"
done
"$B/bench_flip" --envoys 50 --flips 20 --modes teal --teal-session shared \
  | tee "$OUT/flip-50-shared.txt"
"$B/bench_flip" --envoys 20 --flips 20 \
  --modes teal,teal-cli,teal-mtls,envoy-file,envoy-file-each \
  | tee "$OUT/flip-20-cli-mtls.txt"
for lrs in on off; do
  "$B/bench_flip" --envoys 20 --flips 20 --modes teal --lrs $lrs --baseline 10 \
    | tee -a "$OUT/flip-20-lrs.txt"
done
for args in "--groups 50 --services 1" "--groups 1 --services 1000"; do
  "$B/bench_commit" $args | tee -a "$OUT/commit.txt"
done
"$B/bench_bytes" --services 1000 --flips 5 | tee "$OUT/bytes.txt"
"$B/bench_peers" --switches 20 | tee "$OUT/peers.txt"
uptime >> "$OUT/machine.txt"
echo "output in $OUT"

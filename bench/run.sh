#!/usr/bin/env bash
# Benchmark: generate a synthetic landing zone, run bronze, silver and gold on it, and report
# wall time and peak memory of each stage. usage: bench/run.sh [PAYMENTS] (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
payments="${1:-1000000}"
bin="${CARGO_TARGET_DIR:-target}/release/paylake"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 bench/generate.py "$work/landing" "$payments"
echo "stage   seconds  peak_rss_mib"
for stage in bronze silver gold; do
  args=("--lake" "$work/lake" "$stage")
  [ "$stage" = bronze ] && args+=("--landing" "$work/landing")
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "%e %M" -o "$work/time" "$bin" "${args[@]}" > "$work/$stage.out"
    read -r seconds kib < "$work/time"
    printf '%-7s %8s %13s\n' "$stage" "$seconds" "$((kib / 1024))"
  else
    start=$(date +%s.%N)
    "$bin" "${args[@]}" > "$work/$stage.out"
    printf '%-7s %8.2f %13s\n' "$stage" "$(echo "$(date +%s.%N) - $start" | bc)" "n/a"
  fi
done
tail -n 2 "$work/gold.out"

#!/usr/bin/env bash
# Benchmark against a peer, in one run: generate the input once (the original four-CSV layout and
# the folder layout of micro-batches, same data), then, for each layout, time DuckDB building
# the unified table in one query from that layout's files and paylake bronze+silver+gold on
# the same files. Prints seconds, peak RSS, the ratio to DuckDB on the same layout and whether
# each stage stayed within 1 GiB (issue 8's budget).
#
# usage: bench/run.sh [PAYMENTS]   (default 1000000; `make bench BENCH_PAYMENTS=N`)
# environment:
#   PAYLAKE_BIN          the binary (default ${CARGO_TARGET_DIR:-target}/release/paylake)
#   VENV                 a venv with duckdb and deltalake (default $HOME/.cache/paylake/venv)
#   BENCH_PAYLAKE_FLAGS  extra flags for paylake silver and gold, e.g. "--memory-limit 1GiB"
#   BENCH_VERIFY=1       afterwards, check that each lake's gold.unified_payments equals DuckDB's
#                        table from the same layout
#   BENCH_LAYOUTS        the layouts to time: "flat folder" (default), "flat" or "folder"
set -euo pipefail
cd "$(dirname "$0")/.."

payments="${1:-1000000}"
bin="${PAYLAKE_BIN:-${CARGO_TARGET_DIR:-target}/release/paylake}"
venv="${VENV:-$HOME/.cache/paylake/venv}"
read -r -a flags <<< "${BENCH_PAYLAKE_FLAGS:-}"
layouts="${BENCH_LAYOUTS:-flat folder}"
budget_kib=$((1024 * 1024))

[ -x "$bin" ] || { echo "bench: no paylake binary at $bin (make build)" >&2; exit 2; }
[ -x "$venv/bin/python" ] || { echo "bench: no Python venv at $venv (make venv)" >&2; exit 2; }
# GNU time, not the shell keyword: it reports the command's peak RSS (ru_maxrss).
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }

work="$(mktemp -d "${TMPDIR:-/tmp}/paylake-bench.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A private copy, so every stage runs the same binary even if a build replaces it meanwhile.
cp "$bin" "$work/paylake"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"

# measure NAME COMMAND...: runs COMMAND under GNU time, keeping "seconds peak_kib" in
# $work/NAME.time and its output in $work/NAME.out and .err. A failed stage is reported with its
# stderr and marked FAILED in the table; the benchmark exits 1 after printing what it measured.
failures=0
measure() {
  local name="$1"
  shift
  echo "bench: $name ..." >&2
  if ! /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err"; then
    echo "bench: $name failed ($(head -n 1 "$work/$name.time")): $*" >&2
    echo "--- last lines of its stderr:" >&2
    tail -n 25 "$work/$name.err" >&2
    touch "$work/$name.failed"
    failures=$((failures + 1))
    return 1
  fi
}

# run_paylake LAYOUT: bronze, silver and gold into a fresh lake from $work/LAYOUT; a failed
# stage ends the layout's run.
run_paylake() {
  local layout="$1" lake="$work/lake-$1"
  measure "$layout-bronze" "$work/paylake" --lake "$lake" bronze --landing "$work/$layout" &&
    measure "$layout-silver" "$work/paylake" --lake "$lake" silver --profile ${flags[@]+"${flags[@]}"} &&
    measure "$layout-gold" "$work/paylake" --lake "$lake" gold --profile ${flags[@]+"${flags[@]}"} ||
    true
}

measure generate "$venv/bin/python" bench/generate.py "$payments" --flat "$work/flat" --folder "$work/folder" || exit 1
# Per layout, the yardstick first, then paylake (not timed without its yardstick). Both
# layouts fit in the page cache after generation.
for layout in $layouts; do
  measure "$layout-duckdb" "$venv/bin/python" bench/unified_duckdb.py "$work/$layout" "$work/duckdb-$layout.parquet" || continue
  run_paylake "$layout"
done

# The report. Stage lines are "engine layout stage seconds peak_kib" for awk.
seconds() { cut -d' ' -f1 < "$work/$1.time"; }
# rows_of STEP TABLE: the row count STEP printed for TABLE ("<step> TABLE N rows ...").
rows_of() {
  [ -f "$work/$1.out" ] || { echo "?"; return; }
  awk -v table="$2" '$2 == table && $4 == "rows" { n = $3 } END { print (n == "" ? "?" : n) }' "$work/$1.out"
}
files_in() { find "$work/$1" -type f | wc -l; }
mib_in() { du -sm "$work/$1" | cut -f1; }
# The commit the benchmark's sources are at (the binary may be built from elsewhere: see its time).
source_state() {
  local head
  head="$(git rev-parse --short HEAD 2>/dev/null)" || { echo "not a git checkout"; return; }
  git diff --quiet HEAD 2>/dev/null && echo "$head" || echo "$head + uncommitted changes"
}
# stage_line ENGINE LAYOUT STAGE NAME: the stage's line, if it ran. GNU time's first line is
# "Command exited with non-zero status N" for a failed one: its last holds the numbers.
stage_line() {
  [ -f "$work/$4.time" ] || return 0
  local failed=""
  [ ! -f "$work/$4.failed" ] || failed=" FAILED"
  echo "$1 $2 $3 $(tail -n 1 "$work/$4.time")$failed"
}
{
  for layout in $layouts; do
    stage_line duckdb "$layout" unified "$layout-duckdb"
    for stage in bronze silver gold; do
      stage_line paylake "$layout" "$stage" "$layout-$stage"
    done
  done
} > "$work/stages"

echo
echo "paylake bench   $(date -u '+%Y-%m-%d %H:%M UTC')"
# The load average tells a quiet machine from a shared one: the seconds mean little on the latter.
echo "machine         $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM"
echo "load average    $load_before before the run, $(cut -d' ' -f1-3 /proc/loadavg) after"
echo "paylake         $bin ($(date -u -r "$bin" '+built %Y-%m-%d %H:%M UTC')), source $(source_state)"
echo "paylake flags   silver and gold: ${BENCH_PAYLAKE_FLAGS:-(none)}"
echo "input           $(tail -n 1 "$work/generate.err" | sed 's/^generated //; s/ in [0-9.]* s$//'), generated in $(seconds generate) s"
echo "                four CSVs $(mib_in flat) MiB; folder layout $(files_in folder) files, $(mib_in folder) MiB"
echo
awk -v budget="$budget_kib" '
  function line(engine, layout, stage, s, kib, note) {
    printf "%-8s %-7s %-8s %9.2f %9d %9s  %s%s\n", engine, layout, stage, s, kib / 1024,
      (base > 0 ? sprintf("%.2f", s / base) : "n/a"), (kib <= budget ? "yes" : "NO"), note
  }
  BEGIN { printf "%-8s %-7s %-8s %9s %9s %9s  %s\n", "engine", "layout", "stage", "seconds", "peak MiB", "x DuckDB", "<= 1 GiB" }
  # The paylake stages of a layout are measured against DuckDB on the same layout.
  $1 == "duckdb" {
    base = ($6 == "FAILED" ? 0 : ($4 > 0 ? $4 : 0.01))
    line($1, $2, $3, $4, $5, ($6 == "FAILED" ? "  FAILED" : ""))
    next
  }
  {
    line($1, $2, $3, $4, $5, ($6 == "FAILED" ? "  FAILED" : ""))
    total[$2] += $4
    if ($5 > peak[$2]) peak[$2] = $5
    if ($3 == "gold" && $6 != "FAILED") line($1, $2, "total", total[$2], peak[$2], "")
  }' "$work/stages"
echo
unified="unified rows   "
for layout in $layouts; do
  unified="$unified $layout: duckdb $(rows_of "$layout-duckdb" unified_payments), paylake $(rows_of "$layout-gold" gold.unified_payments);"
done
echo "${unified%;}"

if [ "${BENCH_VERIFY:-0}" = 1 ] && [ "$failures" -eq 0 ]; then
  for layout in $layouts; do
    "$venv/bin/python" bench/compare_unified.py "$work/duckdb-$layout.parquet" "$work/lake-$layout" |
      sed "s|$work/||; s/^/verify          /" || failures=$((failures + 1))
  done
fi

# Where the time goes: each model's profile (`--profile`) of every layout's run.
for layout in $layouts; do
  for stage in silver gold; do
    [ -f "$work/$layout-$stage.err" ] || continue
    echo
    echo "profile of $layout $stage:"
    sed -n '/^ *model  *kind/,/^total /p' "$work/$layout-$stage.err"
  done
done
[ "$failures" -eq 0 ] || { echo "bench: $failures stage(s) or checks failed (see above)" >&2; exit 1; }

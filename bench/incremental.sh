#!/usr/bin/env bash
# make bench-incremental: what one 15-minute micro-batch costs on a lake that already holds N
# payments. For each N, a lake is built once from `generate.py N --flat` (bronze, silver, gold;
# cached under BENCH_CACHE), then copied, and one batch lands: 10,000 new payments, a risk batch
# touching 100 accounts and 50 fraud labels of existing payments. Bronze, Silver and Gold of that
# batch are timed (GNU time: seconds and peak RSS) and printed as one table.
#
#   BENCH_SIZES   payments in the base lake (default "100000 1000000"; 10M takes ~20 min to
#                 build once and needs --memory-limit above 1GiB for gold.payment_training)
#   BENCH_CACHE   where base lakes are kept between runs (default ~/.cache/paylake/bench)
#   BENCH_FLAGS   extra flags for silver and gold (e.g. "--memory-limit 4GiB")
#   PAYLAKE_BIN   the binary (make passes the release build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${PAYLAKE_BIN:?set PAYLAKE_BIN to the paylake binary}"
sizes="${BENCH_SIZES:-100000 1000000}"
cache="${BENCH_CACHE:-$HOME/.cache/paylake/bench}"
flags="${BENCH_FLAGS:-}"
[ -x /usr/bin/time ] || { echo "bench: /usr/bin/time missing (apt-get install time)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# run NAME COMMAND...: runs COMMAND under GNU time; keeps "seconds peak_kib" in $work/NAME.time.
run() {
  local name="$1"
  shift
  if ! /usr/bin/time -f "%e %M" -o "$work/$name.time" "$@" >"$work/$name.out" 2>"$work/$name.err"; then
    echo "bench: $name failed: $*" >&2
    tail -n 20 "$work/$name.err" >&2
    exit 1
  fi
}

# The base lake for N payments, built once and reused.
base_lake() {
  local n="$1" dir="$cache/$n"
  if [ ! -f "$dir/.built" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "bench: building the base lake of $n payments (once, kept in $dir)" >&2
    python3 bench/generate.py "$n" --flat "$dir/landing" >&2
    # shellcheck disable=SC2086
    { "$bin" --lake "$dir/lake" bronze --landing "$dir/landing" >/dev/null \
      && "$bin" --lake "$dir/lake" silver $flags >/dev/null \
      && "$bin" --lake "$dir/lake" gold $flags >/dev/null; } 2>"$dir/build.err" \
      || { echo "bench: building the base lake failed:" >&2; tail -n 20 "$dir/build.err" >&2; exit 1; }
    touch "$dir/.built"
  fi
  echo "$dir"
}

# One 15-minute batch beside the base files: flat names, so Bronze routes them like the rest.
write_batch() {
  local base="$1" out="$2"
  python3 - "$base/landing" "$out" <<'PY'
import csv, random, sys
from datetime import datetime, timedelta
base, out = sys.argv[1], sys.argv[2]
rng = random.Random(15)
with open(f"{base}/account_details.csv") as f:
    accounts = [row["account_id"] for row in csv.DictReader(f)]
with open(f"{base}/payment_transactions.csv") as f:
    payments = [row["payment_id"] for _, row in zip(range(200000), csv.DictReader(f))]
at = datetime(2024, 12, 30, 9, 0)
with open(f"{out}/payment_transactions_batch.csv", "w") as f:
    f.write("payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n")
    for i in range(10000):
        src, dest = rng.sample(accounts, 2)
        ts = at + timedelta(seconds=rng.randrange(900))
        f.write(f"NEW{i:07d},{src},{dest},REF-NEW{i},{rng.randrange(100, 500000) / 100:.2f},{ts:%Y-%m-%d %H:%M:%S}\n")
with open(f"{out}/external_risk_feed_batch.csv", "w") as f:
    f.write("account_id,risk_flag\n")
    for account in rng.sample(accounts, 100):
        f.write(f"{account},{rng.choice('012')}\n")
with open(f"{out}/historical_fraud_cases_batch.csv", "w") as f:
    f.write("payment_id,fraud_type,fraud_reported_date\n")
    for payment in rng.sample(payments, 50):
        f.write(f"{payment},money_mule,2024-12-30\n")
PY
}

printf '%-10s %-8s %10s %10s\n' "payments" "stage" "seconds" "peak MiB" >"$work/table"
for n in $sizes; do
  dir="$(base_lake "$n")"
  lake="$work/lake-$n"
  landing="$work/landing-$n"
  cp -a "$dir/lake" "$lake"
  cp -a "$dir/landing" "$landing"
  write_batch "$dir" "$landing"
  run "bronze-$n" "$bin" --lake "$lake" bronze --landing "$landing"
  # shellcheck disable=SC2086
  run "silver-$n" "$bin" --lake "$lake" silver --profile $flags
  # shellcheck disable=SC2086
  run "gold-$n" "$bin" --lake "$lake" gold --profile $flags
  total=0
  for stage in bronze silver gold; do
    read -r seconds kib <"$work/$stage-$n.time"
    total="$(awk -v a="$total" -v b="$seconds" 'BEGIN { print a + b }')"
    printf '%-10s %-8s %10s %10s\n' "$n" "$stage" "$seconds" "$((kib / 1024))" >>"$work/table"
  done
  printf '%-10s %-8s %10s\n' "$n" "batch" "$total" >>"$work/table"
  grep -h "incremental build\|full build\|nothing new" "$work/silver-$n.err" "$work/gold-$n.err" >&2 || true
  echo "bench: per-model profile of gold at $n payments:" >&2
  sed -n '/^ *model /,$p' "$work/gold-$n.err" >&2
  rm -rf "$lake" "$landing"
done
cat "$work/table"

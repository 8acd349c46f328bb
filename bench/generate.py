#!/usr/bin/env python3
"""Writes a synthetic landing zone (folder layout) for benchmarks: payments in 15-minute
micro-batches, daily account snapshots, irregular risk batches and late fraud labels.

usage: generate.py OUT_DIR PAYMENTS [ACCOUNTS] [DAYS]
Deterministic: the same arguments always write the same files."""
import os
import random
import sys
from datetime import datetime, timedelta, timezone


def main() -> None:
    out = sys.argv[1]
    payments = int(sys.argv[2])
    accounts = int(sys.argv[3]) if len(sys.argv) > 3 else max(100, payments // 50)
    days = int(sys.argv[4]) if len(sys.argv) > 4 else 30
    rng = random.Random(42)
    start = datetime(2024, 10, 1, tzinfo=timezone.utc)
    ids = [f"ACC{i:07d}" for i in range(accounts)]
    opened = {a: start - timedelta(days=rng.randint(0, 3000)) for a in ids}

    batches = days * 96
    per_batch = max(1, payments // batches)
    os.makedirs(f"{out}/payments", exist_ok=True)
    written = 0
    for b in range(batches):
        if written >= payments:
            break
        end = start + timedelta(minutes=15 * (b + 1))
        name = f"{out}/payments/batch_{end:%Y-%m-%dT%H-%M}.csv"
        with open(name, "w") as f:
            f.write("payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n")
            for _ in range(min(per_batch, payments - written)):
                ts = end - timedelta(seconds=rng.randint(1, 900))
                src, dest = rng.choice(ids), rng.choice(ids)
                f.write(f"PAY{written:09d},{src},{dest},REF{written},{rng.randint(100, 2_000_000) / 100:.2f},"
                        f"{ts:%Y-%m-%d %H:%M:%S}\n")
                written += 1

    os.makedirs(f"{out}/accounts", exist_ok=True)
    for d in range(0, days, 7):
        at = start + timedelta(days=d, hours=6)
        with open(f"{out}/accounts/account_details_{at:%Y-%m-%dT%H-%M}.csv", "w") as f:
            f.write("account_id,opening_date\n")
            for a in ids:
                if opened[a] <= at:
                    f.write(f"{a},{opened[a]:%Y-%m-%d}\n")

    os.makedirs(f"{out}/risk_feed", exist_ok=True)
    for r in range(days // 2):
        at = start + timedelta(hours=rng.randint(0, days * 24))
        with open(f"{out}/risk_feed/batch_{at:%Y-%m-%dT%H-%M}.csv", "w") as f:
            f.write("account_id,risk_flag\n")
            for a in rng.sample(ids, max(1, accounts // 100)):
                f.write(f"{a},{rng.choice((0, 1, 1, 2))}\n")

    os.makedirs(f"{out}/fraud_labels", exist_ok=True)
    at = start + timedelta(days=days + 45)
    with open(f"{out}/fraud_labels/labels_{at:%Y-%m-%dT%H-%M}.csv", "w") as f:
        f.write("payment_id,fraud_type,fraud_reported_date\n")
        for p in rng.sample(range(written), max(1, written // 500)):
            f.write(f"PAY{p:09d},{rng.choice(('mule', 'app', 'ato'))},{at - timedelta(days=2):%Y-%m-%d}\n")
    print(f"wrote {written} payments, {accounts} accounts over {days} days into {out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes a synthetic landing zone for the benchmark, in one or both layouts, from the same data.

usage: generate.py PAYMENTS [--flat DIR] [--folder DIR] [--accounts N] [--days D] [--seed S]

--flat DIR    the original pipeline's four CSVs side by side, named as in
              ../shared/seed-sample/data: payment_transactions.csv, account_details.csv,
              external_risk_feed.csv, historical_fraud_cases.csv. Their names carry no
              knowledge time, so paylake knows every row at ingestion time.
--folder DIR  the live layout: payments/<day>/payments_<day>T<HH-MM>.csv every 15 minutes,
              weekly account snapshots, irregular risk batches and one fraud-label file per
              reporting day, each name carrying the moment its rows became knowable.

Both layouts hold the same facts and give the same unified table: the flat files are what the
folder's files add up to (payments in arrival order, each account's and each flag's latest
state, every label in reporting order). Both carry a little realistic dirt: resent and
conflicting payments, broken rows, accounts never in a snapshot, corrected opening dates,
invalid risk flags, relabelled and orphan fraud cases. The window starts on 2024-10-01, so every
file is known long before any default as-of. Deterministic: the same arguments write the same
bytes. Pure standard library, so any python3 runs it.
"""

import argparse
import bisect
import contextlib
import os
import random
import sys
import time
from datetime import date, datetime, timedelta

START = datetime(2024, 10, 1)  # UTC, like every timestamp paylake reads
BATCH_SECONDS = 15 * 60
SNAPSHOT_EVERY_DAYS = 7  # weekly: daily snapshots would make accounts outweigh the payments
FRAUD_TYPES = ("authorized_push_payment", "account_takeover", "money_mule", "first_party")

# Shares of payments, drawn from one uniform number per payment (disjoint ranges).
BROKEN_FIRST = 0.0002  # a broken copy arrives just before the good one (quarantined)
RESENT = 0.0012  # up to here: resent unchanged in the next batch (identical duplicate)
CONFLICTING = 0.0014  # up to here: resent with another amount (conflicting, first one wins)
LABELLED = 0.0034  # up to here: reported as fraud 30-60 days later (0.2% of payments)
NO_REFERENCE = 0.99  # from here: the optional payment_reference is empty

PAYMENT_HEADER = "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n"
ACCOUNT_HEADER = "account_id,opening_date\n"
RISK_HEADER = "account_id,risk_flag\n"
LABEL_HEADER = "payment_id,fraud_type,fraud_reported_date\n"


class Sink:
    """Writes each part of the data to the layouts asked for: flat files stay open for the whole
    run, folder files are written whole. A context manager that closes the flat files."""

    def __init__(self, flat, folder):
        self.flat_dir, self.folder_dir = flat, folder
        self.files = contextlib.ExitStack()
        self.flat = {}
        for d in (flat, folder):
            if d:
                os.makedirs(d, exist_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.files.close()

    def open_flat(self, name, header):
        if self.flat_dir:
            path = os.path.join(self.flat_dir, name)
            self.flat[name] = self.files.enter_context(open(path, "w", buffering=1 << 20))
            self.flat[name].write(header)

    def to_flat(self, name, text):
        if self.flat_dir:
            self.flat[name].write(text)

    def to_folder(self, relative, header, text):
        if self.folder_dir:
            path = os.path.join(self.folder_dir, relative)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(header)
                f.write(text)


def stamp(at):
    """A knowledge-time stamp as paylake reads it from a path: YYYY-MM-DDTHH-MM."""
    return at.strftime("%Y-%m-%dT%H-%M")


class Accounts:
    """The accounts: 95% opened before the window, 5% during it (up to the last snapshot, so
    every snapshot differs from the one before); one in 200 is never in a snapshot (payments
    name it, the account file does not). A few old accounts carry a wrong opening date until
    mid-window, a few come with an extra invalid row."""

    def __init__(self, rng, count, days):
        rnd = rng.random
        self.ids = [f"ACC{a:07d}" for a in range(count)]
        self.snapshot_days = list(range(0, days, SNAPSHOT_EVERY_DAYS))
        old = count - count // 20
        # Day of opening relative to the window start; new accounts in id order of opening.
        self.opened = [-1 - int(rnd() * 3650) for _ in range(old)]
        self.opened += sorted(int(rnd() * (self.snapshot_days[-1] + 1)) for _ in range(count - old))
        # Payments on day d use only accounts opened by then: the first open_by_day[d] ids.
        self.open_by_day = [bisect.bisect_right(self.opened, d, lo=old) for d in range(days + 1)]
        self.known = [a for a in range(count) if a % 200 != 199]
        first_day = START.date().toordinal()
        self.opening = [date.fromordinal(first_day + d).isoformat() for d in self.opened]
        self.wrong, self.invalid = {}, set()
        for a in self.known:
            u = rnd()
            if a < old and u < 0.001:
                self.wrong[a] = date.fromordinal(first_day + self.opened[a] - 365).isoformat()
            elif u < 0.0015:
                self.invalid.add(a)


def write_payments(sink, rng, payments, accounts, days):
    """Writes the payments batch by batch; returns (lines written, labelled payments as
    (index, day of payment))."""
    rnd = rng.random
    ids, open_by_day = accounts.ids, accounts.open_by_day
    batches = days * 96
    # Formatting a datetime per row is the slowest part: build the text from precomputed days
    # and times of day instead.
    day_text = [(START + timedelta(days=d)).strftime("%Y-%m-%d ") for d in range(days + 1)]
    time_text = [f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}" for s in range(86400)]
    cents_text = [f".{c:02d}" for c in range(100)]
    sink.open_flat("payment_transactions.csv", PAYMENT_HEADER)
    labelled = []
    lines_written = 0
    carried = []  # resends, which arrive with the next batch
    for b in range(batches):
        end = BATCH_SECONDS * (b + 1)
        lines = carried
        carried = []
        for i in range(payments * b // batches, payments * (b + 1) // batches):
            t = end - 1 - int(rnd() * BATCH_SECONDS)  # within the 15 minutes before the batch
            day, second = divmod(t, 86400)
            ts = day_text[day] + time_text[second]
            cents = 100 + int(rnd() * 1_999_901)
            amount = f"{cents // 100}{cents_text[cents % 100]}"
            src = ids[int(rnd() * open_by_day[day])]
            dest = ids[int(rnd() * open_by_day[day])]
            u = rnd()
            number = f"{i:09d}"
            pid = "PAY" + number
            reference = "" if u >= NO_REFERENCE else "REF" + number
            line = f"{pid},{src},{dest},{reference},{amount},{ts}\n"
            if u < LABELLED:
                if u < BROKEN_FIRST:
                    kind = i % 4  # an empty, negative or over-precise amount, or a non-ISO time
                    bad_amount = ("", "-" + amount, amount + "5", amount)[kind]
                    bad_ts = ts.replace("-", "/") if kind == 3 else ts
                    lines.append(f"{pid},{src},{dest},{reference},{bad_amount},{bad_ts}\n")
                elif u < RESENT:
                    carried.append(line)
                elif u < CONFLICTING:
                    carried.append(f"{pid},{src},{dest},{reference},{cents // 100 + 1}.00,{ts}\n")
                else:
                    labelled.append((i, day))
            lines.append(line)
        if b == batches - 1:
            lines += carried  # the last batch's resends come after it, in the same file
        text = "".join(lines)
        lines_written += len(lines)
        sink.to_flat("payment_transactions.csv", text)
        closed = START + timedelta(seconds=end)
        sink.to_folder(
            f"payments/{closed:%Y-%m-%d}/payments_{stamp(closed)}.csv", PAYMENT_HEADER, text
        )
    return lines_written, labelled


def write_accounts(sink, accounts, days):
    """Writes the account files; returns the number of rows in the flat file."""
    ids, opening, wrong, invalid = accounts.ids, accounts.opening, accounts.wrong, accounts.invalid
    # Flat: one file is one snapshot, where a repeated account's last row wins: the wrong date
    # first, its correction at the end; an invalid row after the valid one changes nothing.
    rows = []
    for a in accounts.known:
        rows.append(f"{ids[a]},{wrong.get(a, opening[a])}\n")
        if a in invalid:
            rows.append(f"{ids[a]},not-a-date\n")
    rows += [f"{ids[a]},{opening[a]}\n" for a in sorted(wrong)]
    sink.open_flat("account_details.csv", ACCOUNT_HEADER)
    sink.to_flat("account_details.csv", "".join(rows))

    # Folder: a snapshot every week at 06:00 of the accounts opened by then; corrections from
    # mid-window, the invalid rows in the last snapshot.
    for d in accounts.snapshot_days:
        at = START + timedelta(days=d, hours=6)
        last = d == accounts.snapshot_days[-1]
        snapshot = []
        for a in accounts.known:
            if accounts.opened[a] > d:
                continue
            snapshot.append(
                f"{ids[a]},{wrong[a] if a in wrong and d < days // 2 else opening[a]}\n"
            )
            if last and a in invalid:
                snapshot.append(f"{ids[a]},not-a-date\n")
        sink.to_folder(
            f"accounts/account_details_{stamp(at)}.csv", ACCOUNT_HEADER, "".join(snapshot)
        )
    return len(rows)


def write_risk_feed(sink, rng, account_ids, days):
    """Irregular batches (one every two days on average) each flagging 0.5% of the accounts:
    0 clears, 1 suspicious, 2 confirmed; the latest batch mentioning an account wins. Each batch
    also carries one invalid flag. Returns the number of rows in the flat file."""
    rnd = rng.random
    hours = sorted(rng.sample(range(days * 24), max(1, days // 2)))
    per_batch = max(1, len(account_ids) // 200)
    latest, invalid = {}, []
    for h in hours:
        at = START + timedelta(hours=h, minutes=int(rnd() * 60))
        rows = []
        for a in rng.sample(range(len(account_ids)), per_batch):
            u = rnd()
            flag = 0 if u < 0.3 else 1 if u < 0.8 else 2
            latest[a] = flag
            rows.append(f"{account_ids[a]},{flag}\n")
        bad = f"{account_ids[int(rnd() * len(account_ids))]},{'3' if rnd() < 0.5 else ''}\n"
        rows.append(bad)
        invalid.append(bad)
        sink.to_folder(f"risk_feed/external_risk_feed_{stamp(at)}.csv", RISK_HEADER, "".join(rows))

    # Flat: one row per account with its latest flag (within one file the highest flag would
    # win, so earlier flags cannot be listed), then the invalid rows, which change nothing.
    rows = [f"{account_ids[a]},{latest[a]}\n" for a in sorted(latest)] + invalid
    sink.open_flat("external_risk_feed.csv", RISK_HEADER)
    sink.to_flat("external_risk_feed.csv", "".join(rows))
    return len(rows)


def write_labels(sink, rng, labelled, payments):
    """Each labelled payment is reported 30-60 days after it; 2% are relabelled later with
    another type (the latest report wins) and one label in 200 names an unknown payment.
    Returns the number of labels."""
    rnd = rng.random
    by_day = {}  # reporting day -> rows, in the order they were reported
    for n, (i, day) in enumerate(labelled):
        reported = day + 30 + int(rnd() * 31)
        kind = int(rnd() * len(FRAUD_TYPES))
        by_day.setdefault(reported, []).append((f"PAY{i:09d}", FRAUD_TYPES[kind]))
        if rnd() < 0.02:
            later = reported + 1 + int(rnd() * 14)
            other = FRAUD_TYPES[(kind + 1) % len(FRAUD_TYPES)]
            by_day.setdefault(later, []).append((f"PAY{i:09d}", other))
        if n % 200 == 199:
            by_day[reported].append((f"PAY{payments + n:09d}", FRAUD_TYPES[kind]))

    sink.open_flat("historical_fraud_cases.csv", LABEL_HEADER)
    count = 0
    for day in sorted(by_day):
        reported = START + timedelta(days=day)
        text = "".join(f"{pid},{kind},{reported:%Y-%m-%d}\n" for pid, kind in by_day[day])
        count += len(by_day[day])
        sink.to_flat("historical_fraud_cases.csv", text)
        # Analysts file the day's cases in the evening.
        sink.to_folder(
            f"fraud_labels/fraud_cases_{stamp(reported + timedelta(hours=23))}.csv",
            LABEL_HEADER,
            text,
        )
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("payments", type=int)
    parser.add_argument("--flat", help="write the four-CSV layout into this folder")
    parser.add_argument("--folder", help="write the folder layout into this folder")
    parser.add_argument("--accounts", type=int, help="default: payments/10, 100 to 100,000")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not (args.flat or args.folder):
        parser.error("name at least one of --flat and --folder")
    accounts = args.accounts or max(100, min(args.payments // 10, 100_000))

    started = time.monotonic()
    rng = random.Random(args.seed)
    with Sink(args.flat, args.folder) as sink:
        model = Accounts(rng, accounts, args.days)
        lines, labelled = write_payments(sink, rng, args.payments, model, args.days)
        account_rows = write_accounts(sink, model, args.days)
        risk_rows = write_risk_feed(sink, rng, model.ids, args.days)
        labels = write_labels(sink, rng, labelled, args.payments)
    print(
        f"generated {args.payments} payments ({lines} lines), {accounts} accounts "
        f"({account_rows} rows), {risk_rows} risk rows, {labels} fraud labels over {args.days} "
        f"days in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

"""The bad-file corpus of the adversarial suite, written on demand (nothing opaque is committed).

Every case is a landing path and how to make it: bytes for a regular file, or a FIFO or a
symlink. `write(root)` creates the whole corpus under a landing folder `root`; `write(root,
[name])` only the named cases. The expected outcome of each case is in
`tests/adversarial/test_bad_files.py`, next to the test that checks it.

Regenerate it by hand with `python3 -m corpus DIR` from `tests/adversarial/`.
Pure standard library and deterministic: the same call writes the same bytes.
"""

import gzip
import os
import random
from dataclasses import dataclass
from pathlib import Path

PAYMENT_HEADER = "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp"
DAY = "payments/2024-11-20"


def payment(n, amount="10.00", reference=None):
    reference = f"REF-{n}" if reference is None else reference
    return f"PAY{n},ACC101,ACC201,{reference},{amount},2024-11-20 10:{n % 60:02d}:00"


def csv(*lines, end="\n", header=PAYMENT_HEADER, final_newline=True):
    text = end.join([header, *lines]) if header is not None else end.join(lines)
    return (text + (end if final_newline else "")).encode()


def long_line():
    """Header, one good row, a 3 MiB line without a comma, one good row (no trailing newline)."""
    rng = random.Random(15)
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(4096))
    body = (blob * 768).encode()  # 3 MiB
    return csv(payment(6101)) + body + b"\n" + payment(6102).encode()


def gzip_bytes():
    return gzip.compress(csv(payment(6201), payment(6202), payment(6203)), mtime=0)


def random_bytes():
    rng = random.Random(1313)
    return bytes(rng.randrange(256) for _ in range(20000))


@dataclass(frozen=True)
class Case:
    name: str
    path: str  # relative to the landing root
    kind: str = "file"  # file | fifo | symlink
    data: bytes = b""  # for files
    target: str = ""  # for symlinks: relative to the symlink's folder, or absolute


def cases(outside=None):
    """The corpus. `outside` is a folder outside the landing root, for the escaping symlink."""
    outside = Path(outside) if outside else Path("/nonexistent-outside")
    return [
        Case("empty", f"{DAY}/empty_2024-11-20T10-00.csv", data=b""),
        Case("header_only", f"{DAY}/header_only_2024-11-20T10-01.csv", data=csv()),
        Case(
            "bom_crlf",
            f"{DAY}/bom_crlf_2024-11-20T10-02.csv",
            data=b"\xef\xbb\xbf" + csv(payment(6001), payment(6002), payment(6003), end="\r\n"),
        ),
        Case(
            "wrong_delimiter",
            f"{DAY}/semicolons_2024-11-20T10-03.csv",
            data=csv(
                payment(6011).replace(",", ";"),
                payment(6012).replace(",", ";"),
                header=PAYMENT_HEADER.replace(",", ";"),
            ),
        ),
        Case(
            # Issue 13 item 2: one opening quote that never closes, then five good rows.
            "unbalanced_quote",
            f"{DAY}/unbalanced_quote_2024-11-20T10-04.csv",
            data=csv(
                'PAY5042,ACC101,ACC201,"REF open,10.00,2024-11-18 10:00:00',
                *(payment(5043 + i) for i in range(5)),
            ),
        ),
        Case(
            "invalid_utf8",
            f"{DAY}/invalid_utf8_2024-11-20T10-05.csv",
            data=csv(payment(6021))
            + b"PAY6022,ACC101,ACC201,REF-\xff\xfe\xc3(,10.00,2024-11-20 10:22:00\n"
            + csv(payment(6023), header=None),
        ),
        Case(
            "nul_bytes",
            f"{DAY}/nul_bytes_2024-11-20T10-06.csv",
            data=csv(
                payment(6031),
                "PAY\x006032,ACC101,ACC201,REF-6032,10.00,2024-11-20 10:32:00",
                "PAY6033,ACC101,ACC201,REF-\x00\x00,10.00,2024-11-20 10:33:00",
                payment(6034),
            ),
        ),
        Case("long_line", f"{DAY}/long_line_2024-11-20T10-07.csv", data=long_line()),
        Case(
            "extra_columns",
            f"{DAY}/extra_columns_2024-11-20T10-08.csv",
            data=csv(
                payment(6041) + ",web,DE",
                payment(6042) + ",app,FR",
                header=PAYMENT_HEADER + ",channel,country",
            ),
        ),
        Case(
            "missing_required_column",
            f"{DAY}/missing_amount_2024-11-20T10-09.csv",
            data=csv(
                "PAY6051,ACC101,ACC201,REF-6051,2024-11-20 10:51:00",
                "PAY6052,ACC101,ACC201,REF-6052,2024-11-20 10:52:00",
                header="payment_id,src_account_id,dest_account_id,payment_reference,timestamp",
            ),
        ),
        Case(
            "missing_optional_column",
            f"{DAY}/missing_reference_2024-11-20T10-10.csv",
            data=csv(
                "PAY6061,ACC101,ACC201,10.00,2024-11-20 10:01:00",
                "PAY6062,ACC101,ACC201,10.00,2024-11-20 10:02:00",
                header="payment_id,src_account_id,dest_account_id,amount,timestamp",
            ),
        ),
        Case(
            "ragged_rows",
            f"{DAY}/ragged_rows_2024-11-20T10-11.csv",
            data=csv(
                payment(6071),
                payment(6072) + ",surplus",
                "PAY6073,ACC101,ACC201",
                payment(6074),
            ),
        ),
        Case(
            "duplicate_header",
            f"{DAY}/duplicate_header_2024-11-20T10-12.csv",
            data=csv(
                "PAY6081,PAY6081x,ACC101,ACC201,REF-6081,10.00,2024-11-20 10:41:00",
                header="payment_id,PAYMENT_ID," + PAYMENT_HEADER.split(",", 1)[1],
            ),
        ),
        Case(
            "jsonl_broken_lines",
            "fraud_labels/api/labels_2025-01-13T08-00.jsonl",
            data=(
                b'{"payment_id": "PAY1001", "fraud_type": "money_mule", "fraud_reported_date": "2025-01-13"}\n'
                b'{"payment_id": "PAY1002", "fraud_type": "money_m\n'
                b"[1, 2, 3]\n"
                b"not json at all\n"
                b'{"payment_id": "PAY1003", "fraud_type": "first_party", "fraud_reported_date": "2025-01-13"}\n'
                b'{"payment_id": "PAY1004", "fraud_type": "first_party", "fraud_reported_date": "2025-01-13"} trailing\n'
                b"\n"
                b'{"payment_id": "PAY1005", "fraud_type": "first_party", "fraud_reported_date": "2025-01-13"}'
            ),
        ),
        Case("gzip_named_csv", f"{DAY}/gzipped_2024-11-20T10-13.csv", data=gzip_bytes()),
        Case(
            "unknown_folder",
            "unknown_source/2024-11-20/payments_2024-11-20T10-14.csv",
            data=csv(payment(6091)),
        ),
        Case(
            "unknown_extension",
            f"{DAY}/payments_2024-11-20T10-15.txt",
            data=csv(payment(6092)),
        ),
        Case(
            "blank_lines",
            f"{DAY}/blank_lines_2024-11-20T10-16.csv",
            data=csv(payment(6301), "", "   ", "\t", payment(6302), "", "\r"),
        ),
        Case(
            "multiline_quoted_value",
            f"{DAY}/multiline_2024-11-20T10-17.csv",
            data=csv(payment(6401), 'PAY6402,ACC101,ACC201,"REF\nspans, two lines",10.00,2024-11-20 10:02:00', payment(6403)),
        ),
        Case(
            "no_final_newline",
            f"{DAY}/no_final_newline_2024-11-20T10-18.csv",
            data=csv(payment(6411), payment(6412), final_newline=False),
        ),
        Case(
            "cr_only_line_ends",
            f"{DAY}/cr_only_2024-11-20T10-19.csv",
            data=csv(payment(6421), payment(6422), end="\r"),
        ),
        Case("random_bytes", f"{DAY}/random_2024-11-20T10-20.csv", data=random_bytes()),
        Case("hidden_file", f"{DAY}/..evil_2024-11-20T10-21.csv", data=csv(payment(6431))),
        Case("fifo", f"{DAY}/fifo_2024-11-20T10-22.csv", kind="fifo"),
        Case(
            "symlink_inside",
            f"{DAY}/link_inside_2024-11-20T10-23.csv",
            kind="symlink",
            target="../../shared/linked_2024-11-20T10-23.csv",
        ),
        Case(
            "symlink_outside",
            f"{DAY}/link_outside_2024-11-20T10-24.csv",
            kind="symlink",
            target=str(outside / "secret.csv"),
        ),
        Case(
            "symlink_dangling",
            f"{DAY}/link_dangling_2024-11-20T10-25.csv",
            kind="symlink",
            target="does_not_exist.csv",
        ),
        Case(
            "symlink_loop",
            f"{DAY}/link_loop_2024-11-20T10-26.csv",
            kind="symlink",
            target="link_loop_2024-11-20T10-26.csv",
        ),
    ]


def write(root, names=None, outside=None):
    """Writes the corpus (or the named cases) under the landing folder `root`; returns the cases.

    The inside symlink's target `shared/linked_….csv` (a payments file outside every source
    folder, so it is only reached through the link) and the outside symlink's target
    (`outside/secret.csv`) are written as well."""
    root = Path(root)
    chosen = [c for c in cases(outside) if names is None or c.name in names]
    for case in chosen:
        path = root / case.path
        path.parent.mkdir(parents=True, exist_ok=True)
        if case.kind == "file":
            path.write_bytes(case.data)
        elif case.kind == "fifo":
            os.mkfifo(path)
        elif case.kind == "symlink":
            if case.name == "symlink_inside":
                target = root / "shared" / "linked_2024-11-20T10-23.csv"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(csv(payment(6441), payment(6442)))
            if case.name == "symlink_outside" and outside is not None:
                Path(outside).mkdir(parents=True, exist_ok=True)
                (Path(outside) / "secret.csv").write_bytes(csv(payment(6451)))
            os.symlink(case.target, path)
        else:
            raise ValueError(case.kind)
    return chosen

"""Case 5: a read-only lake. Every writing command exits non-zero with a clear message (and no
panic); every reading command still answers; the lake is unchanged.

`chmod -R a-w` does not stop root, so as root the lake is shown through a read-only bind mount
(skipped with the reason when that cannot be made); as another user it is made read-only with
chmod.
"""

import os
import stat

import pytest

import chaos
from chaos import try_mount

WRITERS = [
    ("bronze", ["bronze", "--landing", "{landing}"]),
    ("silver", ["silver", "--as-of", chaos.AS_OF]),
    ("gold", ["gold", "--as-of", chaos.AS_OF]),
    ("optimize", ["optimize"]),
    ("vacuum", ["vacuum", "--retain", "0h"]),
    ("quarantine-replay", ["quarantine", "replay", "--table", "payments"]),
]
READERS = [
    ("sql", ["sql", "SELECT count(*) AS n FROM gold.unified_payments"]),
    ("status", ["status"]),
    ("status-json", ["--json", "status"]),
    ("history", ["history", "gold.unified_payments"]),
    ("schema", ["schema"]),
    ("export", ["export", "gold.unified_payments", "--format", "csv", "--output", "{out}"]),
]
# What a clear refusal names: the cause, as the OS gives it or in paylake's words.
CLEAR = ["read-only", "os error 30", "permission denied", "os error 13"]


@pytest.fixture(scope="module")
def read_only_lake(paylake, tmp_path_factory):
    root = tmp_path_factory.mktemp("read-only")
    lake = root / "lake"
    paylake.pipeline(lake, chaos.SAMPLE)
    # New landing data, so that bronze has something to write.
    landing = chaos.copy_tree(chaos.SAMPLE, root / "landing")
    extra = landing / "payments" / "2024-11-18" / "payments_2024-11-18T10-00.csv"
    extra.parent.mkdir(exist_ok=True)
    extra.write_text(
        "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n"
        "PAY7001,ACC101,ACC201,REF-7001,12.00,2024-11-18 10:00:00\n"
    )
    before = chaos.contents(lake, ["bronze", "silver", "gold"])
    listing = sorted(str(p.relative_to(lake)) for p in lake.rglob("*"))
    view = root / "view"
    if os.geteuid() == 0:
        view.mkdir()
        why = try_mount("--bind", lake, view) or try_mount("-o", "remount,bind,ro", view)
        if why:
            chaos.unmount(view)
            pytest.skip(f"root ignores file permissions and a read-only bind mount failed: {why}")
    else:
        view = lake
        for path in [lake, *lake.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield view, landing, root
    if os.geteuid() == 0:
        chaos.unmount(view)
    else:
        for path in [lake, *lake.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    assert sorted(str(p.relative_to(lake)) for p in lake.rglob("*")) == listing, "files changed"
    chaos.assert_same(chaos.contents(lake, ["bronze", "silver", "gold"]), before, "the lake")


def fill(args, landing, out):
    return [a.format(landing=landing, out=out) for a in args]


@pytest.mark.parametrize("name,args", WRITERS, ids=[w[0] for w in WRITERS])
def test_writing_command_on_a_read_only_lake_exits_non_zero_clearly(read_only_lake, paylake, name, args):
    view, landing, root = read_only_lake
    result = paylake.run(view, *fill(args, landing, root / "unused.csv"))
    assert result.returncode != 0, f"{name} succeeded on a read-only lake:\n{result.stdout}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.describe()
    assert any(word in result.stderr.lower() for word in CLEAR), result.describe()


@pytest.mark.parametrize("name,args", READERS, ids=[r[0] for r in READERS])
def test_reading_command_on_a_read_only_lake_works(read_only_lake, paylake, name, args):
    view, landing, root = read_only_lake
    out = root / f"export-{name}.csv"
    result = paylake.run(view, *fill(args, landing, out))
    assert result.returncode == 0, result.describe()
    if name == "sql":
        assert "46" in result.stdout
    if name == "export":
        assert len(out.read_text().splitlines()) == 47

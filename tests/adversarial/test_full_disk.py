"""Case 4: a full disk. The lake lives on a small tmpfs (mounting one needs root: skipped with
the reason otherwise). Bronze into a 2 MiB lake with more landing data than fits exits 1 with a
clear error, no panic and nothing landed twice; once the tmpfs is remounted larger, a re-run
lands every row exactly once. Then Silver on a disk with room for Bronze only: exit 1, the
previous tables untouched; with room again, Silver and Gold equal a clean run's.
"""

import os
import random

import pytest

import chaos
from chaos import try_mount

HEADER = "payment_id,src_account_id,dest_account_id,payment_reference,amount,timestamp\n"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def incompressible_landing(folder, files=40, rows=1000):
    """The sample plus `files` payment files whose references are random: about 5 MB that
    compress to well over 2 MiB. Accounts are the sample's, so Silver's gates pass."""
    chaos.copy_tree(chaos.SAMPLE, folder)
    rng = random.Random(4)
    day = folder / "payments" / "2024-11-18"
    day.mkdir(parents=True, exist_ok=True)
    n = 0
    for f in range(files):
        lines = [HEADER]
        for _ in range(rows):
            n += 1
            reference = "".join(rng.choice(ALPHABET) for _ in range(120))
            src, dest = rng.randrange(101, 111), rng.randrange(201, 211)
            lines.append(
                f"PX{n:06d},ACC{src},ACC{dest},{reference},{rng.randrange(1, 99999)}.{rng.randrange(100):02d},"
                f"2024-11-18 {f % 24:02d}:{n % 60:02d}:00\n"
            )
        (day / f"payments_2024-11-18T{f % 24:02d}-{f % 60:02d}-{f:02d}.csv").write_text("".join(lines))
    return folder


@pytest.fixture(scope="module")
def landing(tmp_path_factory, paylake):
    root = tmp_path_factory.mktemp("full-disk")
    folder = incompressible_landing(root / "landing")
    clean = root / "clean"
    paylake.pipeline(clean, folder)
    return folder, clean, chaos.contents(clean)


def mount_tmpfs(point, size, mounts):
    point.mkdir(parents=True, exist_ok=True)
    why = try_mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", point)
    if why:
        pytest.skip(why)
    mounts.append(point)


def remount(point, size):
    why = try_mount("-o", f"remount,size={size}", point)
    assert why is None, why


def assert_clear_disk_error(result):
    assert result.returncode == 1, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines, f"no error line: {result.describe()}"
    assert "space" in result.stderr.lower() or "os error 28" in result.stderr, result.describe()


def test_bronze_on_a_full_disk_exits_1_then_lands_every_row_once(paylake, landing, tmp_path, mounts):
    folder, clean, _ = landing
    point = tmp_path / "mnt"
    mount_tmpfs(point, "2m", mounts)
    lake = point / "lake"
    result = paylake.run(lake, "bronze", "--landing", folder)
    assert_clear_disk_error(result)
    actual, expected = chaos.bronze_keys(lake), chaos.bronze_keys(clean)
    for name, keys in actual.items():
        assert len(keys) == len(set(keys)) and set(keys) <= set(expected[name]), name
    remount(point, "64m")
    again = paylake.run(lake, "bronze", "--landing", folder)
    assert again.returncode == 0, again.describe()
    chaos.assert_bronze_exactly_once(lake, clean)


# Against the binary of the time this was written, Silver exits 1 with "No space left on device"
# but a tokio worker panics first ("Already shut down", object_store buffered.rs, under
# deltalake's upload_parquet_file): not yet an item of issue 13 (item 10 is "no panics").
@pytest.mark.xfail(strict=False, reason="panic in the Parquet upload on a full disk (issue 13 item 10)")
def test_silver_on_a_full_disk_exits_1_and_leaves_the_lake_as_it_was(
    paylake, landing, tmp_path, mounts
):
    folder, clean, contents = landing
    point = tmp_path / "mnt"
    mount_tmpfs(point, "64m", mounts)
    lake = point / "lake"
    paylake.pipeline(lake, chaos.SAMPLE)  # a first Silver and Gold to keep
    before = chaos.contents(lake)
    paylake.ok(lake, "bronze", "--landing", folder)
    disk = os.statvfs(point)
    used = (disk.f_blocks - disk.f_bfree) * disk.f_frsize
    # Room for a little more than what is there: not for the new Silver version.
    remount(point, f"{used + 256 * 1024}")
    result = paylake.run(lake, "silver", "--as-of", chaos.AS_OF)
    assert_clear_disk_error(result)
    remount(point, "64m")
    chaos.assert_same(chaos.contents(lake), before, "Silver and Gold after a failed Silver")
    for step in ["silver", "gold"]:
        done = paylake.run(lake, step, "--as-of", chaos.AS_OF)
        assert done.returncode == 0, done.describe()
    chaos.assert_bronze_exactly_once(lake, clean)
    chaos.assert_same(chaos.contents(lake), contents, "Silver and Gold after the disk has room")

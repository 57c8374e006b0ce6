"""Local and S3 paths, atomic writes, and which errors are retried."""

import os

import pytest

from dtl_ray import storage
from dtl_ray.errors import StorageError


@pytest.mark.parametrize("message", [
    "When reading information for key 'k': AWS Error SLOW_DOWN during GetObject operation: "
    "HTTP status 503", "HTTP status 502 Bad Gateway", "HTTP status 504 Gateway Timeout",
    "HTTP status 429 TooManyRequests", "AWS Error NETWORK_CONNECTION: Connection reset by peer"])
def test_transient_errors_are_retried_until_they_pass(message):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError(message)
        return "ok"

    assert storage.retry(flaky, base_s=0.001) == "ok" and len(calls) == 3


def test_other_errors_and_the_last_transient_one_are_raised():
    calls = []

    def missing():
        calls.append(1)
        raise OSError("Path does not exist 'bucket/key'")

    with pytest.raises(OSError, match="does not exist"):
        storage.retry(missing, base_s=0.001)
    assert len(calls) == 1  # not retried

    def always_503():
        calls.append(1)
        raise OSError("HTTP status 503")

    calls.clear()
    with pytest.raises(OSError, match="503"):
        storage.retry(always_503, attempts=4, base_s=0.001)
    assert len(calls) == 4


def test_paths_and_schemes(tmp_path):
    assert storage.path_of("s3://bucket/a/b/") == "bucket/a/b"
    assert storage.path_of(f"file://{tmp_path}") == str(tmp_path)
    assert storage.local_path("s3://bucket/a") is None
    assert storage.join("s3://b/x/", "/y/", "z") == "s3://b/x/y/z"
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.path_of("gs://bucket/a")


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    uri = str(tmp_path / "deep" / "folder" / "f.json")
    storage.write_json(uri, {"a": 1})
    storage.write_json(uri, {"a": 2})
    assert storage.read_json(uri) == {"a": 2} and storage.exists(uri)
    assert os.listdir(tmp_path / "deep" / "folder") == ["f.json"]
    assert not storage.exists(str(tmp_path / "nope"))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 kB tmpfs mounted for the test (needs root, as on the CI machine); unmounted after."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(small_disk, tmp_path, capsys):
    from dtl_ray import cli

    with pytest.raises(StorageError, match="no space left on the device"):
        storage.write_bytes(str(small_disk / "runs" / "big.bin"), b"x" * 200_000)
    assert os.listdir(small_disk / "runs") == []  # the temp file is gone too
    with open(small_disk / "filler", "wb") as f:  # fill it up
        try:
            f.write(b"x" * 200_000)
        except OSError:
            pass
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tmp_path}}}\ntarget: {{uri: {tmp_path}}}\n"
                 f"storage: {small_disk}/runs\n")
    assert cli.main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dtl-ray: error: cannot write {small_disk}/runs: no space left on the "
                   "device"]


def test_read_only_storage_is_one_line(small_disk, tmp_path, capsys):
    import subprocess

    from dtl_ray import cli

    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    f = tmp_path / "c.yaml"
    f.write_text(f"source: {{uri: {tmp_path}}}\ntarget: {{uri: {tmp_path}}}\n"
                 f"storage: {small_disk}/runs\n")
    assert cli.main(["run", str(f)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dtl-ray: error: cannot write {small_disk}/runs: read-only file system"]


def test_temp_files_of_a_killed_writer_are_removed(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.json.tmp-0123abcd").write_bytes(b"{")
    (tmp_path / "a" / "keep.tmp-notours").write_bytes(b"")
    storage.write_json(str(tmp_path / "a" / "y.json"), {"k": 1})
    assert storage.remove_temp_files(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path / "a")) == ["keep.tmp-notours", "y.json"]
    assert storage.remove_temp_files("s3://bucket/runs") == 0

"""Local and S3 paths, atomic writes, and which errors are retried."""

import os

import pytest

from dtl_ray import storage


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

"""One run at a time: the run folder's lease, locally and on S3 (moto on 127.0.0.1)."""

import json
import socket
import subprocess
import sys
import time

import boto3
import pytest
from conftest import cli_args, tiny_overrides

from dtl_ray import cli, storage
from dtl_ray.errors import LeaseError
from dtl_ray.pipeline.lease import Lease


def _foreign(uri, renewed_ago, host="other-node", pid=4242):
    """A lease written by someone else."""
    storage.write_bytes(storage.join(uri, "_LEASE.json"), json.dumps(
        {"host": host, "pid": pid, "token": "theirs", "renewed": time.time() - renewed_ago})
        .encode())


@pytest.fixture(params=["local", "s3"])
def run_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "runs" / "r")
    request.getfixturevalue("s3_server")
    boto3.client("s3").create_bucket(Bucket="dtl-lease")
    return f"s3://dtl-lease/runs/r-{time.time_ns()}"


def test_a_second_run_is_refused_until_the_first_ends(run_uri):
    first = Lease(run_uri)
    first.acquire()
    with pytest.raises(LeaseError, match=f"in use by process {first.me['pid']} on "):
        Lease(run_uri).acquire()
    first.release()
    with Lease(run_uri):
        pass
    assert not storage.exists(storage.join(run_uri, "_LEASE.json"))


def test_a_lease_not_renewed_is_taken_over_a_fresh_one_is_not(run_uri):
    _foreign(run_uri, renewed_ago=10)
    with pytest.raises(LeaseError, match="process 4242 on other-node"):
        Lease(run_uri, stale_s=120).acquire()
    _foreign(run_uri, renewed_ago=500)
    with Lease(run_uri, stale_s=120) as lease:
        held = json.loads(storage.read_bytes(lease.uri))
        assert held["token"] == lease.me["token"]


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    uri = str(tmp_path / "r")
    _foreign(uri, renewed_ago=0, host=socket.gethostname(), pid=gone.pid)
    with Lease(uri):
        pass


def test_the_lease_is_renewed_while_held(tmp_path):
    with Lease(str(tmp_path / "r"), renew_s=0.05) as lease:
        first = json.loads(storage.read_bytes(lease.uri))["renewed"]
        time.sleep(0.5)
        assert json.loads(storage.read_bytes(lease.uri))["renewed"] > first


def test_a_run_stopped_early_leaves_no_folder(tmp_path):
    with Lease(str(tmp_path / "new" / "r")):
        assert (tmp_path / "new" / "r" / "_LEASE.json").exists()
    assert not (tmp_path / "new").exists()


def test_the_cli_refuses_a_run_in_use_in_one_line(tiny_demo, tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("name: busy\n")
    args = cli_args(f, tiny_overrides(tiny_demo / "source", tiny_demo / "target", tmp_path,
                                      "busy"))
    with Lease(str(tmp_path / "busy")):
        capsys.readouterr()
        assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by process" in err[0], err

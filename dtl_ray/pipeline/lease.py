"""One run at a time: a lease file in the run folder, created exclusively.

`<storage>/<name>/_LEASE.json` holds who runs the pipeline there (host, pid, a token) and when
it last said so. It is created with an exclusive create (locally `O_CREAT | O_EXCL`; on S3 a
conditional put, `If-None-Match: *`), renewed by a background thread every `RENEW_S`, and
deleted when the run ends. A second run of the same name is refused with one line naming the
holder. A lease is taken over when its holder is gone: a process on this host that no longer
exists (at once), or a lease not renewed for `STALE_S` (a driver killed on another node).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from dtl_ray import console, storage
from dtl_ray.errors import LeaseError

__all__ = ["Lease", "RENEW_S", "STALE_S"]

RENEW_S = 30.0
STALE_S = 120.0



def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Lease:
    """The lease of one run folder; use as a context manager around the run."""

    def __init__(self, run_uri: str, stale_s: float = STALE_S, renew_s: float = RENEW_S) -> None:
        self.run_uri = run_uri
        self.uri = storage.join(run_uri, "_LEASE.json")
        self.stale_s, self.renew_s = stale_s, renew_s
        self.me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._etag: str | None = None
        self._made: str | None = None

    # --- the two backends: exclusive create and compare-and-swap -------------------------------
    def _body(self) -> bytes:
        return json.dumps({**self.me, "renewed": time.time()}).encode()

    def _s3(self):
        import boto3

        bucket, _, key = storage.path_of(self.uri).partition("/")
        return boto3.client("s3"), bucket, key

    def _create(self, replacing: dict | None) -> bool:
        """Writes our lease if there is none (`replacing` None) or if the one there is still
        `replacing` (a takeover). False when someone else was faster."""
        if self.uri.startswith("s3://"):
            import botocore.exceptions

            client, bucket, key = self._s3()
            cond = ({"IfNoneMatch": "*"} if replacing is None
                    else {"IfMatch": replacing["_etag"]})
            try:
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=self._body(),
                                               **cond)["ETag"]
                return True
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("PreconditionFailed",
                                                               "ConditionalRequestConflict"):
                    return False
                raise
        path = storage.path_of(self.uri)
        folder = os.path.dirname(path)
        if self._made is None:  # the topmost folder this lease creates (removed if left empty)
            top = folder
            while not os.path.exists(os.path.dirname(top)):
                top = os.path.dirname(top)
            self._made = "" if os.path.exists(folder) else top
        os.makedirs(folder, exist_ok=True)
        if replacing is not None:  # remove the stale lease only if it is still the same one
            if self._read() != replacing:
                return False
            os.remove(path)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(self._body())
        return True

    def _read(self) -> dict | None:
        """The lease there now (with `_etag` on S3), or None."""
        if self.uri.startswith("s3://"):
            import botocore.exceptions

            client, bucket, key = self._s3()
            try:
                r = client.get_object(Bucket=bucket, Key=key)
            except botocore.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            return {**json.loads(r["Body"].read()), "_etag": r["ETag"]}
        try:
            with open(storage.path_of(self.uri), "rb") as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:  # a half-written lease: its writer died mid-write
            return {"host": "?", "pid": -1, "token": "?", "renewed": 0.0}

    # --- acquire, renew, release -----------------------------------------------------------
    def _gone(self, held: dict) -> bool:
        if held.get("host") == self.me["host"] and not _alive(int(held.get("pid", -1))):
            return True
        return time.time() - float(held.get("renewed", 0)) > self.stale_s

    def acquire(self) -> None:
        """Takes the lease or raises LeaseError naming its holder."""
        for _ in range(3):
            if self._create(None):
                break
            held = self._read()
            if held is None:
                continue  # released meanwhile: try again
            if not self._gone(held):
                age = time.time() - float(held.get("renewed", 0))
                raise LeaseError(
                    f"run {self.run_uri} is in use by "
                    f"process {held.get('pid')} on {held.get('host')} (renewed {age:.0f}s "
                    f"ago): wait for it to finish, or use another name (a holder that is "
                    f"gone is taken over after {self.stale_s:.0f}s)")
            if self._create(held):
                console.say(f"[dtl-ray] took over the run's lease from process "
                            f"{held.get('pid')} on {held.get('host')} (gone)")
                break
        else:
            raise LeaseError(f"could not take the lease {self.uri}: it changes hands too "
                             "often (several runs of the same name?)")
        self._thread = threading.Thread(target=self._renew, daemon=True, name="dtl-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                held = self._read()
                if held is None or held.get("token") != self.me["token"]:
                    console.say("[dtl-ray] warning: this run's lease was taken by another run")
                    return
                if self.uri.startswith("s3://"):
                    self._create(held)
                else:
                    storage.write_bytes(self.uri, self._body())
            except OSError:  # a storage hiccup: the next renewal tries again
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = self._read()
        if held is not None and held.get("token") == self.me["token"]:
            storage.delete(self.uri)
        if self._made:  # a run that stopped before writing anything leaves no folders
            folder = os.path.dirname(storage.path_of(self.uri))
            while folder.startswith(self._made) and os.path.isdir(folder) and not os.listdir(
                    folder):
                os.rmdir(folder)
                folder = os.path.dirname(folder)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""Files at URIs: atomic writes, reads, listings, deletes, and the early access check.

A write is atomic: a reader sees the old file or the whole new one, never a part (a local file
is written beside its name, fsynced and renamed; an S3 PUT is atomic per object and is read
back). Every read and write retries transient errors (`_retry`).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs

from dtl_ray.errors import StorageError
from dtl_ray.storage._retry import ShortWrite, retry
from dtl_ray.storage._uri import join, path_of, resolve, s3_filesystem


def _reason(e: Exception) -> str:
    text = str(e).replace("\n", " ")
    for marker in ("AWS Error ", "Detail: "):
        if marker in text:
            text = text[text.index(marker):]
    return text[:240]


def _local_reason(e: OSError) -> str:
    import errno

    named = {errno.ENOSPC: "no space left on the device", errno.EROFS: "read-only file system",
             errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}
    return named.get(e.errno, f"{type(e).__name__}: {e}"[:240])


MIN_FREE_BYTES = 1 << 20


def _local_unwritable(path: str) -> str | None:
    """Why nothing can be written at a local `path` (judged on it, or on its nearest existing
    parent when it does not exist yet; nothing is written), or None."""
    p = os.path.abspath(path)
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    if not os.path.isdir(p):
        return f"{p} is a file, not a folder"
    st = os.statvfs(p)
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if not os.access(p, os.W_OK | os.X_OK):
        return "permission denied"
    if st.f_bavail * st.f_frsize < MIN_FREE_BYTES:
        return "no space left on the device"
    return None


def check_access(uri: str, write: bool = False) -> None:
    """Fails early, with one clear line, when `uri` cannot be read (or written).

    Raises:
        StorageError: unreachable endpoint, refused credentials, missing bucket.
    """
    if not uri.startswith("s3://"):
        if write:  # a read-only folder, no permission, a full disk: told now, in one line
            reason = _local_unwritable(path_of(uri))
            if reason:
                raise StorageError(f"cannot write {uri}: {reason}")
        return
    # a wrong endpoint or bucket is told in seconds: a few attempts, a short connect timeout
    # (the run's own reads and writes keep S3_MAX_ATTEMPTS for transient errors)
    fs, path = s3_filesystem(attempts=3, connect_timeout=3.0), path_of(uri)
    bucket = path.split("/", 1)[0]
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise StorageError(f"bucket '{bucket}' of {uri} does not exist (or is not visible "
                               "with these credentials)")
        fs.get_file_info(path)
        if write:
            probe = join(uri, f".dtl-ray-probe-{uuid.uuid4().hex[:8]}")
            write_bytes(probe, b"ok")
            delete(probe)
    except StorageError:
        raise
    except OSError as e:
        raise StorageError(f"cannot {'write' if write else 'read'} {uri}: {_reason(e)}") from None


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return retry(fs.get_file_info, path).type != pafs.FileType.NotFound


def read_file(fs: pafs.FileSystem, path: str) -> bytes:
    """The bytes of one file, transient errors retried."""
    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return retry(read)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    return read_file(fs, path)


def write_bytes(uri: str, data: bytes) -> None:
    """Writes atomically: a reader sees the old file or the whole new one, never a part."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        folder = path.rsplit("/", 1)[0]
        tmp = f"{path}{TEMP}{uuid.uuid4().hex[:8]}"
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # the bytes are on disk before the name points at them
            os.replace(tmp, path)
            _fsync_dir(folder)  # and so is the name (a marker survives a power cut)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)  # a full disk leaves no partial file behind
            raise StorageError(f"cannot write {uri}: {_local_reason(e)}") from None
    else:  # an S3 PUT is atomic per object; S3 has no folders to create
        def put() -> None:
            with fs.open_output_stream(path) as f:
                f.write(data)
            # read back what S3 now holds: a PUT that a proxy or a retry garbled is caught
            # here, not when a later stage reads the file
            size = fs.get_file_info(path).size
            if size != len(data):
                raise ShortWrite(f"{uri} holds {size} bytes after writing {len(data)}")

        retry(put)


TEMP = ".tmp-"
"""What `write_bytes` puts between a local file's name and its random suffix while writing."""


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(uri: str) -> int:
    """Deletes what `write_bytes` left behind below a local folder when its process was
    killed mid-write (`name.tmp-xxxxxxxx`); returns how many. Nothing to do on S3."""
    import re

    if uri.startswith("s3://"):
        return 0
    root, n = path_of(uri), 0
    pattern = re.compile(re.escape(TEMP) + r"[0-9a-f]{8}$")
    for d, _, names in os.walk(root):
        for name in names:
            if pattern.search(name):
                os.remove(os.path.join(d, name))
                n += 1
    return n


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=False, default=float).encode())


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    fs.delete_file(path)


def delete_tree(uri: str) -> None:
    """Deletes a folder (a prefix on S3) and everything under it; a missing one is fine."""
    fs, path = resolve(uri)
    if retry(fs.get_file_info, path).type == pafs.FileType.Directory:
        retry(fs.delete_dir, path)
    elif isinstance(fs, pafs.S3FileSystem):  # S3 has no folders: delete the prefix's objects
        retry(lambda: fs.delete_dir_contents(path, missing_dir_ok=True))


def list_files(uri: str) -> list[tuple[str, int]]:
    """All files below `uri` as (path relative to uri, size), sorted; [] if it is missing.

    A local name that is not UTF-8 comes back as Python decodes it (with surrogate escapes:
    see `is_utf8`): pyarrow's listing fails on the whole folder for one such name."""
    if not uri.startswith("s3://"):
        root = path_of(uri)
        if not os.path.isdir(root):
            return []
        out = []
        for d, _, names in os.walk(root, followlinks=True):
            for n in names:
                p = os.path.join(d, n)
                try:
                    size = os.path.getsize(p)
                except OSError:  # a broken link: listed, and rejected when it is read
                    size = 0
                out.append((os.path.relpath(p, root).replace(os.sep, "/"), size))
        return sorted(out)
    fs, root = resolve(uri)
    if retry(fs.get_file_info, root).type != pafs.FileType.Directory:
        return []
    infos = retry(fs.get_file_info, pafs.FileSelector(root, recursive=True))
    out = [(i.path[len(root):].lstrip("/"), i.size) for i in infos if i.type == pafs.FileType.File]
    return sorted(out)

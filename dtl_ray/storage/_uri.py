"""URIs: a local path or `s3://bucket/prefix`, and the pyarrow filesystem behind each.

S3's endpoint, region and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_REGION`, ...); credentials are never handled here.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

S3_MAX_ATTEMPTS = 10


def configure_s3(endpoint_url: str | None, region: str | None) -> dict[str, str]:
    """Sets the S3 endpoint and region for this process (and the Ray workers it starts).

    Returns the environment variables set, for a Ray runtime_env. Credentials are never
    handled here: they come from the standard AWS chain (variables, profiles, roles).
    """
    env = {}
    if endpoint_url:
        env["AWS_ENDPOINT_URL"] = endpoint_url
    if region:
        env["AWS_REGION"] = region
    os.environ.update(env)
    return env


def s3_filesystem(attempts: int | None = None,
                   connect_timeout: float | None = None) -> pafs.S3FileSystem:
    """pyarrow's S3 client for the endpoint and region in the environment; `attempts`
    defaults to `DTL_RAY_S3_ATTEMPTS` or S3_MAX_ATTEMPTS (each read and write is retried
    again around it by `retry`)."""
    if attempts is None:
        attempts = int(os.environ.get("DTL_RAY_S3_ATTEMPTS", S3_MAX_ATTEMPTS))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        if endpoint.startswith("http://"):
            kwargs["scheme"] = "http"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    # transient errors (503 SlowDown, dropped connections) are retried with backoff;
    # delayed open: a small file is one PutObject, not a multipart upload (three requests)
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    return pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(attempts),
                             allow_delayed_open=True, **kwargs)


def path_of(uri: str) -> str:
    """The path of `uri` within its filesystem (no filesystem is built: cheap per file)."""
    if uri.startswith("s3://"):
        return uri[len("s3://"):].rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://")
    return os.path.abspath(uri[len("file://"):] if uri.startswith("file://") else uri)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Returns (filesystem, path within it) for a local path or an s3:// URI."""
    path = path_of(uri)
    return (s3_filesystem() if uri.startswith("s3://") else pafs.LocalFileSystem()), path


def local_path(uri: str) -> str | None:
    """The absolute local path of `uri`, or None when it is remote."""
    if uri.startswith("s3://"):
        return None
    return resolve(uri)[1]


def join(uri: str, *parts: str) -> str:
    """Joins URI parts with '/'."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def is_utf8(name: str) -> bool:
    """Whether a listed name is valid UTF-8 (S3 keys always are; local names may not be)."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def printable(name: str) -> str:
    """A listed name that is not UTF-8, with its bad bytes as \\x escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def train_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for a Ray Train/Tune RunConfig."""
    local = local_path(uri)
    if local is not None:
        return local, None
    fs, path = resolve(uri)
    return path, fs

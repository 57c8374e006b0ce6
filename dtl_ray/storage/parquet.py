"""Parquet tables at URIs (local or S3): read into pandas, written atomically as one file."""

from __future__ import annotations

import pandas as pd

from dtl_ray.storage._files import write_bytes
from dtl_ray.storage._retry import retry
from dtl_ray.storage._uri import resolve

__all__ = ["read_df", "write_df", "write_table"]


def read_df(uri: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Reads a Parquet file or folder (local or S3) into pandas."""
    import pyarrow.parquet as pq

    fs, path = resolve(uri)
    return retry(lambda: pq.read_table(path, filesystem=fs, columns=columns)).to_pandas()


def write_table(table, uri: str) -> None:
    """Writes a pyarrow Table as one Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_bytes(uri, buf.getvalue().to_pybytes())


def write_df(df: pd.DataFrame, uri: str) -> None:
    """Writes a DataFrame as one Parquet file, atomically."""
    import pyarrow as pa

    write_table(pa.Table.from_pandas(df, preserve_index=False), uri)

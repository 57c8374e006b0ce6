"""Storage: local paths and `s3://` URIs through one API, atomic writes, retried I/O.

Import the package, not its private modules: `storage.join`, `storage.write_bytes`,
`storage.retry` (the modules `_uri`, `_files` and `_retry` are how it is organised, not import
paths). Two public modules sit beside it: `storage.parquet` (tables) and
`storage.checkpoints` (the one checkpoint file format; it imports torch).
"""

from dtl_ray.storage._files import (
    check_access,
    delete,
    delete_tree,
    exists,
    list_files,
    read_bytes,
    read_file,
    read_json,
    remove_temp_files,
    write_bytes,
    write_json,
)
from dtl_ray.storage._retry import TRANSIENT, ShortWrite, is_transient, retry
from dtl_ray.storage._uri import (
    configure_s3,
    is_utf8,
    join,
    local_path,
    path_of,
    printable,
    resolve,
    train_storage,
)

__all__ = ["resolve", "path_of", "join", "local_path", "is_utf8", "printable", "configure_s3",
           "train_storage", "exists", "read_file", "read_bytes", "write_bytes", "read_json",
           "write_json", "delete", "delete_tree", "list_files", "remove_temp_files",
           "check_access", "TRANSIENT", "ShortWrite", "is_transient", "retry"]

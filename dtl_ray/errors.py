"""The errors a user can fix. Each ends a command with one line naming the key, file or folder,
and exit code 2 (`cli.user_error`), also when it was raised inside a Ray task or Train worker.

They live here, below every other module, so that the command line tells them apart without
importing torch or Ray: a typo in a config answers in well under a second.
"""

from __future__ import annotations

__all__ = ["ConfigError", "DataError", "ModelError", "CheckpointError", "StorageError",
           "LeaseError", "RunError", "USER_ERRORS"]


class ConfigError(ValueError):
    """A configuration problem; the message names the key."""


class DataError(ValueError):
    """A problem with the input data: a missing folder, an empty split, a class that cannot be
    used, too many undecodable images."""


class ModelError(ValueError):
    """A model setting: an unknown backbone or layer, weights that do not fit it."""


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint."""


class StorageError(OSError):
    """A URI that cannot be used: a missing bucket, refused credentials, an unreachable
    endpoint, a read-only or full disk."""


class LeaseError(RuntimeError):
    """Another process holds the run folder."""


class RunError(ValueError):
    """A run folder that cannot be used for this (missing, or its stages not finished)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, DataError, ModelError, CheckpointError, StorageError, LeaseError, RunError,
    FileNotFoundError)
"""What `cli.user_error` looks for (a file named on the command line may be missing too)."""

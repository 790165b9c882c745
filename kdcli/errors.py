"""Errors the library raises. The CLI turns each into one red line and exit 1.

Every message names the flag or file at fault and says what was expected, so a
user can fix the call without reading a traceback.
"""


class KdcliError(Exception):
    """Base class: a user-facing error with a message that says how to fix it."""

    exit_code = 1


class ConfigError(KdcliError):
    """A flag or option has a value that cannot work."""


class DataError(KdcliError):
    """A dataset cannot be found, read or used as asked."""


class ArtifactError(KdcliError):
    """A run directory, checkpoint or Parquet file is missing, corrupt or mismatched."""

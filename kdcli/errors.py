"""Errors the library raises. The CLI turns each into one red line and exit 1.

Every message names the flag or file at fault and says what was expected, so a
user can fix the call without reading a traceback.
"""


class KdcliError(Exception):
    """Base class: a user-facing error with a message that says how to fix it."""

    exit_code = 1
    label = "Error"  # how the CLI starts the message line


class ConfigError(KdcliError):
    """A flag or option has a value that cannot work."""


class DataError(KdcliError):
    """A dataset cannot be found, read or used as asked."""


class ArtifactError(KdcliError):
    """A run directory, checkpoint or Parquet file is missing, corrupt or mismatched."""


class Stopped(KdcliError):
    """A signal stopped a run after it saved a checkpoint: resumable with --resume.

    Exit status 130 for SIGINT (Ctrl-C), as shells expect; 75 (EX_TEMPFAIL, "try again")
    for SIGTERM, the signal of a preemption, so a requeue script can tell "preempted,
    resumable" from a failure.
    """

    label = "Stopped"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        import signal

        self.exit_code = 130 if signum == signal.SIGINT else 75


class PointsFailed(KdcliError):
    """Some points of a multi-point sweep failed (each was reported as it failed); the others ran."""

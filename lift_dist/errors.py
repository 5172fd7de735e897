"""User-facing errors: every entry point prints these as one line, without a traceback.

`LiftError` keeps its one-line message even when it crossed a process boundary: PyTorch's DataLoader
re-raises a worker's exception as `type(e)("Caught DataError in DataLoader worker process 0.\\n
Original Traceback ...")`, which would put a traceback in front of the sample and shard that the
message names. The constructor recognises that wrapper and keeps only the original message.
"""

from __future__ import annotations

import re

_WORKER_WRAPPER = re.compile(r"^Caught (\w+) in (DataLoader worker process \d+)\.\nOriginal Traceback")


class LiftError(Exception):
    """A problem with the user's input (config, files, data), explained in the message."""

    def __init__(self, message: str = "", *args):
        message = _unwrap_worker_message(type(self).__name__, str(message))
        super().__init__(message, *args)


def _unwrap_worker_message(cls_name: str, message: str) -> str:
    m = _WORKER_WRAPPER.match(message)
    if not m:
        return message
    # The traceback ends with "<module path>.<Class>: <original message>" (which may span lines).
    marker = re.compile(rf"^(?:[\w.]+\.)?{re.escape(m.group(1))}: ", re.M)
    hits = list(marker.finditer(message))
    if not hits:
        return message.splitlines()[0]
    original = message[hits[-1].end():].strip()
    return f"{original} (in {m.group(2)})"


# Ends the line of a rank that stopped because another rank failed: readers of several ranks' logs
# (launch --wait) report the line of the rank that failed first.
SECONDARY = "(another rank's line names the cause)"


class ConfigError(LiftError):
    """An invalid setting: unknown name, value out of range, inconsistent options."""


class DataError(LiftError):
    """Missing, corrupt or inconsistent data (shards, manifests, images, annotations, run files)."""


class RunDirError(LiftError):
    """A run directory that cannot be used as asked (in use, holds another run, damaged checkpoints)."""


def choices(valid) -> str:
    return ", ".join(sorted(str(v) for v in valid))


def one_line(e: BaseException) -> str:
    """The message as one line (OS errors with their file)."""
    if isinstance(e, OSError) and not isinstance(e, LiftError):
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return f"{e.strerror or e}{where}"
    return " ".join(str(e).split("\n")).strip()

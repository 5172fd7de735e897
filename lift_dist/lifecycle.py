"""How a training process starts, stops and fails, whichever launcher started it.

- `StopRequest`: SIGTERM (what Slurm sends at preemption and at the time limit, and torchrun when it
  is stopped) or SIGINT only sets a flag; the trainer checks it with every step's collective, so all
  ranks stop at the same step, write a checkpoint and exit (a requeued job loses nothing).
- `die_with_parent()`: a rank (or shard-writing worker) whose parent dies gets SIGTERM, so killing
  torchrun or the shard builder never leaves orphans training or writing.
- `report_failure()`: under torchrun, the rank's one-line error goes into torchelastic's error file,
  which torchrun prints last ("traceback : ...") instead of "To enable traceback see ...".
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import threading
import time

PR_SET_PDEATHSIG = 1


class StopRequest:
    """Set by SIGTERM / SIGINT; `signum` says which arrived first."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = self.signum or signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies (Linux prctl), and watch the parent pid as a fallback
    (prctl fires when the parent *thread* that forked us ends, which a launcher may not outlive)."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    if parent > 1:
        threading.Thread(target=watch, name="lift-dist-parent-watch", daemon=True).start()


def report_failure(message: str, secondary: bool = False) -> None:
    """Put the one-line error where torchrun reads a failed worker's message (TORCHELASTIC_ERROR_FILE).
    torchrun's root cause is the earliest stamp (whole seconds, ties to the lowest rank): a `secondary`
    failure, one caused by another rank's, is stamped a second later so it never takes that place."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        with open(path, "w") as f:
            json.dump({"message": message, "timestamp": int(time.time()) + int(secondary)}, f)
    except OSError:
        pass

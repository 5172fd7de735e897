"""The code of another commit, for benchmarks that time it side by side with this checkout (`--baseline REF`)."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def worktree(ref: str | None):
    """A detached git worktree of `ref` (the baseline's code), removed afterwards; None without a ref."""
    if ref is None:
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), ref], cwd=REPO, check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, capture_output=True)

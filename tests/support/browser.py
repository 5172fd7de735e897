"""Find (or, as root, install Debian's) chromium for headless page checks in tests.

`find_browser()` returns (path, None) or (None, reason-to-skip). LIFT_DIST_BROWSER=0 skips outright;
LIFT_DIST_BROWSER=/path/to/chrome uses that binary.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Offline, deterministic headless run: no sandbox (root), no GPU, no background network chatter.
BASE_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--hide-scrollbars")
_LOCK = Path(tempfile.gettempdir()) / "lift-dist-chromium-install.lock"


def _which() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_browser(install: bool = True, timeout: int = 900) -> tuple[str | None, str | None]:
    env = os.environ.get("LIFT_DIST_BROWSER", "")
    if env == "0":
        return None, "LIFT_DIST_BROWSER=0"
    if env and env != "1":
        return (env, None) if os.access(env, os.X_OK) else (None, f"LIFT_DIST_BROWSER={env} is not executable")
    path = _which()
    if path or not install:
        return path, None if path else "no chromium on PATH"
    if os.geteuid() != 0:
        return None, "no chromium on PATH and not root (cannot apt-get install chromium)"
    if not shutil.which("apt-get"):
        return None, "no chromium on PATH and no apt-get"
    # Serialise: several test processes (or engineers) may try at once, and dpkg holds its own lock anyway.
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = _which()
        if path:
            return path, None
        env_apt = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env_apt, timeout=timeout)
            except subprocess.TimeoutExpired:
                return None, f"{' '.join(cmd)} timed out after {timeout}s"
            if proc.returncode != 0:
                return None, f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    path = _which()
    return (path, None) if path else (None, "chromium installed but not found on PATH")


def _run(browser: str, args: list[str], timeout: int) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="lift-chromium-") as profile:
        cmd = [browser, *BASE_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, HOME=profile))


def screenshot(browser: str, url: str, out_png: Path, size: tuple[int, int] = (1400, 3000),
               timeout: int = 120) -> subprocess.CompletedProcess:
    """PNG of the page; stderr carries console messages (--enable-logging=stderr)."""
    return _run(browser, [f"--screenshot={out_png}", f"--window-size={size[0]},{size[1]}", "--enable-logging=stderr",
                          "--v=0", "--virtual-time-budget=5000", url], timeout)


def dump_dom(browser: str, url: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """The serialized DOM after load and scripts (virtual time lets onload handlers finish)."""
    return _run(browser, ["--dump-dom", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", url], timeout)


def console_errors(stderr: str) -> list[str]:
    """Chromium logs every page console message as `...:CONSOLE(line)] msg` whatever its level, and our
    pages log nothing, so any such line (or an uncaught exception) is a problem."""
    return [ln for ln in stderr.splitlines() if re.search(r":CONSOLE[(:]\d+", ln) or "Uncaught" in ln]

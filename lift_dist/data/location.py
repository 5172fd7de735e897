"""Where a shard set lives: a local directory (or file://), an http(s):// prefix, or any other URL read
through a command of the user's (s3://, gs://, ...: `data.shard_pipe = "aws s3 cp {url} -"`, which
makes webdataset's `pipe:` URLs). Manifests and shards are opened with webdataset's gopen (curl for
http, a shell pipe for `pipe:`), nothing hand-written. A read that breaks off is retried with
back-off; past the limit the error names the URL.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from lift_dist.errors import ConfigError, DataError

DIRECT = ("http", "https")  # schemes webdataset opens itself (curl); others need data.shard_pipe


def is_remote(root) -> bool:
    return "://" in str(root) and not str(root).startswith("file://")


def local_path(root) -> Path:
    text = str(root)
    return Path(urlparse(text).path if text.startswith("file://") else text)


def join(root, name: str):
    """`root/name` for a directory or a URL prefix."""
    if is_remote(root):
        return str(root).rstrip("/") + "/" + name
    return local_path(root) / name


def openable(url, pipe: str | None = None) -> str:
    """What gopen opens: a local path, the URL itself (http), or `pipe:<command>` for other schemes."""
    if not is_remote(url):
        return str(local_path(url))
    scheme = urlparse(str(url)).scheme
    if pipe:
        return "pipe:" + pipe.replace("{url}", shlex.quote(str(url)))
    if scheme not in DIRECT:
        raise ConfigError(f"data.shards={url}: {scheme}:// is read through a command of yours; set data.shard_pipe, e.g. "
                          "'aws s3 cp {url} -' or 'gsutil cat {url}'")
    return str(url)


CURL_EXITS = {6: "the host is not known", 7: "no connection to the host", 18: "the transfer was cut short",
              22: "the server answered with an HTTP error (e.g. 404: no such file)", 28: "the transfer timed out",
              56: "the connection was reset"}


def describe(e: Exception) -> str:
    """A read error in a few words: curl's exit status (webdataset reads http through curl) or the error."""
    m = re.search(r"exit (\d+)", str(e))
    if m and int(m.group(1)) in CURL_EXITS:
        return f"curl exit {m.group(1)}: {CURL_EXITS[int(m.group(1))]}"
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def describe_failure(url: str, e: Exception) -> str:
    """`describe`, and for an http(s) read whose curl exit status did not arrive (the tar reader may
    see the empty stream first) the status the server gives now, asked with one more request."""
    what = describe(e)
    if what.startswith("curl exit") or urlparse(str(url)).scheme not in DIRECT:
        return what
    status = http_status(str(url))
    return f"HTTP {status}: the server answered with an HTTP error" if status and status >= 400 else what


def http_status(url: str) -> int | None:
    try:  # the first byte only; curl is what webdataset reads http(s) with
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-r", "0-0", "--max-time", "10", url],
                           capture_output=True, text=True, timeout=20)
        return int(r.stdout.strip() or 0) or None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def backoff(attempt: int) -> float:
    return min(30.0, 0.5 * 2 ** attempt)


def read_bytes(url, pipe: str | None = None, retries: int = 3) -> bytes:
    """The whole content at `url` (a manifest, a summary); DataError naming it when it cannot be read."""
    if not is_remote(url):
        try:
            return local_path(url).read_bytes()
        except FileNotFoundError:
            raise DataError(f"{url} does not exist") from None
    from webdataset.gopen import gopen  # noqa: PLC0415  (webdataset imports torch: only remote reads need it here)

    target = openable(url, pipe)
    for attempt in range(retries + 1):
        try:
            with gopen(target, "rb") as f:
                return f.read()
        except Exception as e:  # curl's exit status (22: HTTP >= 400, 18: cut short) arrives as an OSError
            if attempt == retries:
                raise DataError(f"cannot read {url} ({describe_failure(url, e)}) after {retries} retries") from None
            time.sleep(backoff(attempt))
    raise AssertionError("unreachable")


def exists(url, pipe: str | None = None) -> bool:
    if not is_remote(url):
        return local_path(url).exists()
    try:
        read_bytes(url, pipe, retries=0)
        return True
    except DataError:
        return False


__all__ = ["backoff", "describe", "exists", "is_remote", "join", "local_path", "openable", "read_bytes"]

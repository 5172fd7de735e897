"""Walk a large top-level JSON object without building it in memory.

`json.load` on iNaturalist 2018's train2018.json (437,513 images + 437,513 annotations) builds ~900k
dicts, several hundred MB. Here the file is read in 1 MB chunks, and each element of the top-level
arrays is decoded on its own (json's C scanner via `raw_decode`) and handed to a callback that keeps
only what it needs, so memory is the chunk plus whatever the callbacks keep.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lift_dist.errors import DataError

CHUNK_CHARS = 1 << 20
MAX_ELEMENT_CHARS = 64 << 20  # an array element larger than this is treated as malformed input
_NON_WS = re.compile(r"[^ \t\n\r]")
_DECODER = json.JSONDecoder()


class _Scanner:
    def __init__(self, f, path: Path):
        self.f, self.path = f, path
        self.buf, self.pos, self.base, self.eof = "", 0, 0, False

    def _fill(self) -> bool:
        if self.eof:
            return False
        data = self.f.read(CHUNK_CHARS)
        if not data:
            self.eof = True
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos :] + data
        self.pos = 0
        return True

    def fail(self, msg: str, pos: int | None = None):
        at = self.base + (self.pos if pos is None else pos)
        raise DataError(f"{self.path}: not valid JSON at character {at}: {msg}")

    def peek(self) -> str:
        """Next non-blank character ('' at end of file), without consuming it."""
        while True:
            m = _NON_WS.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return self.buf[self.pos]
            self.pos = len(self.buf)
            if not self._fill():
                return ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            self.fail(f"expected {ch!r}")
        self.pos += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                v, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as e:
                # Usually the value runs past the chunk: read more and retry.
                if len(self.buf) - self.pos > MAX_ELEMENT_CHARS or not self._fill():
                    self.fail(e.msg, e.pos)
                continue
            if end == len(self.buf) and self._fill():
                continue  # a number/literal may continue in the next chunk: decode it again whole
            self.pos = end
            return v


def stream_object(path: str | os.PathLike, arrays: dict[str, Callable[[Any, int], None]]) -> dict[str, Any]:
    """Walk the top-level object in `path`. For each key in `arrays` (whose value must be an array),
    call `arrays[key](element, index)` per element. Other arrays are skipped element by element.
    Returns {key: value} for the non-array members and {key: length} under '__lengths__'."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist")
    others: dict[str, Any] = {"__lengths__": {}}
    with open(path, encoding="utf-8") as f:
        sc = _Scanner(f, path)
        sc.expect("{")
        if sc.peek() == "}":
            sc.pos += 1
        else:
            while True:
                key = sc.value()
                if not isinstance(key, str):
                    sc.fail("expected a member name")
                sc.expect(":")
                if sc.peek() == "[":
                    sc.pos += 1
                    callback = arrays.get(key)
                    n = 0
                    if sc.peek() == "]":
                        sc.pos += 1
                    else:
                        while True:
                            element = sc.value()
                            if callback is not None:
                                callback(element, n)
                            n += 1
                            c = sc.peek()
                            sc.pos += 1
                            if c == "]":
                                break
                            if c != ",":
                                sc.pos -= 1
                                sc.fail(f"expected ',' or ']' in '{key}'")
                    others["__lengths__"][key] = n
                elif key in arrays:
                    sc.fail(f"'{key}' must be an array")
                else:
                    others[key] = sc.value()
                c = sc.peek()
                sc.pos += 1
                if c == "}":
                    break
                if c != ",":
                    sc.pos -= 1
                    sc.fail("expected ',' or '}'")
        if sc.peek() != "":
            sc.fail("extra data after the top-level object")
    return others

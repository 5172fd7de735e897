"""Nested training state (optimizer state dicts, RNG states) as data only: tensors in a safetensors
file, everything else in a JSON file beside it. Reading back never runs code, unlike a pickle.

    save_state(obj, stem)   -> stem.safetensors + stem.json
    load_state(stem, like)  -> the object again

JSON holds the structure: dicts (non-string keys as [key, value] pairs), lists, tuples, numbers,
strings, and references {"__tensor__": name} into the safetensors file; numpy arrays travel as
tensors. Anything else (DeepSpeed's loss scaler, an enum, a named tuple) is stored as the plain data
it holds, and `load_state` puts that data back into the matching object of `like` (the live
optimizer's own state_dict), which supplies the types. A file that does not decode, or that does not
fit `like`, is a DataError naming the file.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lift_dist.errors import DataError

T, ARR, TUP, PAIRS, OBJ, ENUM, FLOAT = "__tensor__", "__ndarray__", "__tuple__", "__pairs__", "__object__", "__enum__", "__float__"


def _encode(x, tensors: dict, path: str):
    if isinstance(x, torch.Tensor):
        name = f"{len(tensors):06d}:{path}"[:200]
        tensors[name] = x.detach().cpu().contiguous()
        return {T: name}
    if isinstance(x, np.ndarray):
        return {ARR: _encode(torch.from_numpy(np.ascontiguousarray(x)), tensors, path), "dtype": str(x.dtype)}
    if isinstance(x, enum.Enum):
        return {ENUM: _encode(x.value, tensors, path)}
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if np.isfinite(x) else {FLOAT: repr(x)}
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in x.items()}
        return {PAIRS: [[_encode(k, tensors, path), _encode(v, tensors, f"{path}.{k}")] for k, v in x.items()]}
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return {TUP: [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(x)]}
    if isinstance(x, (list, tuple)):  # named tuples come back through `like`
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(x)]
    attrs = {k: v for k, v in vars(x).items() if _plain(v)} if hasattr(x, "__dict__") else {}
    return {OBJ: type(x).__name__, "attrs": _encode(attrs, tensors, path)}


def _plain(v) -> bool:
    if isinstance(v, (bool, int, float, str, torch.Tensor, np.ndarray)) or v is None:
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(i) for i in v)
    if isinstance(v, dict):
        return all(isinstance(k, (str, int)) and _plain(i) for k, i in v.items())
    return False


def save_state(obj, stem: Path) -> list[Path]:
    """Write stem.safetensors and stem.json; returns both paths."""
    stem = Path(stem)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, "")
    st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    save_file(tensors, str(st), metadata={"format": "lift-dist-state"})
    js.write_text(json.dumps({"format": 1, "tree": tree}))
    return [st, js]


class _Decoder:
    def __init__(self, tensors: dict, where: str):
        self.tensors, self.where = tensors, where

    def fail(self, path: str, msg: str):
        raise DataError(f"{self.where}: {msg} at '{path or '/'}'; the checkpoint does not fit this optimizer "
                        "(written for other modules, optimizer or ZeRO stage?)")

    def __call__(self, node, like, path: str = ""):
        if isinstance(node, dict):
            if T in node:
                return self._tensor(node[T], like, path)
            if ARR in node:
                return self(node[ARR], None, path).numpy().astype(node.get("dtype", "float64"))
            if FLOAT in node:
                return float(node[FLOAT])
            if ENUM in node:
                value = self(node[ENUM], None, path)
                return type(like)(value) if isinstance(like, enum.Enum) else value
            if TUP in node:
                items = node[TUP]
                likes = like if isinstance(like, tuple) and len(like) == len(items) else [None] * len(items)
                return tuple(self(v, lk, f"{path}.{i}") for i, (v, lk) in enumerate(zip(items, likes)))
            if PAIRS in node:
                return self._pairs(node[PAIRS], like, path)
            if OBJ in node:
                return self._object(node, like, path)
            return {k: self(v, like.get(k) if isinstance(like, dict) else None, f"{path}.{k}") for k, v in node.items()}
        if isinstance(node, list):
            likes = like if isinstance(like, (list, tuple)) and len(like) == len(node) else [None] * len(node)
            items = [self(v, lk, f"{path}.{i}") for i, (v, lk) in enumerate(zip(node, likes))]
            return type(like)(*items) if hasattr(like, "_fields") else items
        return node

    def _tensor(self, name: str, like, path: str) -> torch.Tensor:
        if name not in self.tensors:
            self.fail(path, f"tensor '{name}' is missing from the .safetensors file")
        t = self.tensors[name]
        if isinstance(like, torch.Tensor) and tuple(like.shape) != tuple(t.shape) and like.numel() > 0:
            self.fail(path, f"tensor of shape {tuple(t.shape)} where the optimizer has {tuple(like.shape)}")
        return t

    def _pairs(self, pairs, like, path: str) -> dict:
        out = {}
        for k, v in pairs:
            key = self(k, None, path)
            key = tuple(key) if isinstance(key, list) else key
            out[key] = self(v, like.get(key) if isinstance(like, dict) else None, f"{path}.{key}")
        return out

    def _object(self, node: dict, like, path: str):
        if like is None or type(like).__name__ != node[OBJ]:
            self.fail(path, f"a {node[OBJ]} where the optimizer has {type(like).__name__}")
        for k, v in self(node["attrs"], None, path).items():
            setattr(like, k, v)
        return like


def load_state(stem: Path, like=None):
    """Read what save_state wrote; `like` (the live object's own state) supplies non-data types."""
    stem = Path(stem)
    st, js = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    for f in (st, js):
        if not f.is_file():
            raise DataError(f"{f} is missing from the checkpoint")
    try:
        tensors = load_file(str(st))
    except Exception as e:  # safetensors raises its own error types for a damaged file
        raise DataError(f"{st} is not a readable safetensors file ({type(e).__name__}: {e})") from None
    try:
        doc = json.loads(js.read_text())
        tree = doc["tree"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{js} is not a lift-dist state file ({type(e).__name__}: {e})") from None
    return _Decoder(tensors, str(js))(tree, like)


def state_files(stem: Path) -> list[Path]:
    stem = Path(stem)
    return [stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")]


__all__ = ["load_state", "save_state", "state_files"]

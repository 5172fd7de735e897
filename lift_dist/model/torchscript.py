"""The tensors of a TorchScript archive, read as data.

OpenAI ships its CLIP weights as TorchScript archives (ViT-B-16.pt of the CLIP release), and
`lift-dist export --format torchscript` writes one. `torch.jit.load` would compile and run the
archive's TorchScript: a module's `__setstate__` can write files while the archive loads, and
`torch.load(weights_only=True)` refuses such archives. Yet every tensor is in the archive's
`data.pkl` and `data/` members. Here `data.pkl` is read by an unpickler that builds only tensors,
dicts, lists and inert stand-ins for the archive's module objects, so no code of the archive runs.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import zipfile
from pathlib import Path

import torch

_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64, "ComplexDoubleStorage": torch.complex128,
}
# TorchScript's list and type-tag helpers: each returns its first argument, the data itself.
_IDENTITY_HELPERS = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"}


class TorchScriptObject:
    """Stand-in for one of the archive's objects (a `__torch__.*` class): keeps its pickled state, runs nothing."""

    state: object = None

    def __setstate__(self, state) -> None:
        self.state = state


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _first(value, *_):
    return value


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, _requires_grad=False, _hooks=None,
                    metadata=None) -> torch.Tensor:
    if metadata:  # conj / neg bits: values would differ from what was saved
        raise ValueError(f"a tensor with metadata {metadata!r:.80}, which weights do not carry")
    if not isinstance(storage, torch.Tensor):
        raise ValueError("a tensor without a storage")
    size, stride = tuple(size), tuple(stride)
    if any(s < 0 for s in size + stride) or offset < 0 or len(size) != len(stride):
        raise ValueError(f"a tensor of size {size}, stride {stride}, offset {offset}")
    end = offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1 if all(size) else offset
    if end > storage.numel():
        raise ValueError(f"a tensor of size {size} reaches element {end} of a storage of {storage.numel()}")
    return storage.as_strided(size, stride, offset)


class _DataUnpickler(pickle._Unpickler):  # noqa: SLF001  (the Python unpickler: its BUILD can be restricted)
    """Resolves only the names a TorchScript data.pkl needs for tensors; anything else is refused by name.
    BUILD may only set a stand-in's state: on a tensor it would call Tensor.__setstate__ (set_, which
    resizes a storage past the checked sizes)."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def __init__(self, data: bytes, storage):
        super().__init__(io.BytesIO(data))
        self.storage = storage

    def load_build(self):
        state, inst = self.stack.pop(), self.stack[-1]
        if type(inst) is not TorchScriptObject:
            raise pickle.UnpicklingError(f"it sets the state of a {type(inst).__name__}, which is not one of the archive's objects")
        inst.__setstate__(state)

    dispatch[pickle.BUILD[0]] = load_build

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return TorchScriptObject
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _IDENTITY_HELPERS:
            return _first
        raise pickle.UnpicklingError(f"it names {module}.{name}, which is not tensor data")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid
        return self.storage(str(key), kind.dtype, int(numel))


def _data_pickle(names: list[str]) -> str:
    found = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(found) != 1:
        raise ValueError("no data.pkl at the archive's top level" if not found else "more than one data.pkl")
    return found[0]


def read_torchscript_state(path: str | Path, load: bool = True) -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of every tensor attribute of the archive's module tree (parameters and
    buffers, as `torch.jit.load(path).state_dict()` names them). With `load=False` the tensors are
    meta tensors: the archive's structure and sizes are checked without reading its data.
    Raises ValueError, pickle.UnpicklingError, KeyError or zipfile.BadZipFile for a damaged or foreign archive."""
    with zipfile.ZipFile(path) as z:
        pkl = _data_pickle(z.namelist())
        prefix = pkl[: -len("data.pkl")]
        order = z.read(f"{prefix}byteorder").strip() if f"{prefix}byteorder" in z.namelist() else sys.byteorder.encode()
        if order != sys.byteorder.encode():
            raise ValueError(f"its tensors are {order.decode(errors='replace')[:10]}-endian, this machine is {sys.byteorder}")
        storages: dict[str, torch.Tensor] = {}

        def storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            if key not in storages:
                member = f"{prefix}data/{key}"
                nbytes = numel * torch.empty(0, dtype=dtype).element_size()
                if z.getinfo(member).file_size != nbytes:  # KeyError if the member is missing
                    raise ValueError(f"{member} holds {z.getinfo(member).file_size} bytes, its {numel} {dtype} need {nbytes}")
                storages[key] = (torch.frombuffer(bytearray(z.read(member)), dtype=dtype) if load and numel
                                 else torch.empty(numel, dtype=dtype, device="cpu" if load else "meta"))
            return storages[key]

        root = _DataUnpickler(z.read(pkl), storage).load()
    state: dict[str, torch.Tensor] = {}
    _collect(root, "", state, set())
    return state


def _collect(obj, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    """A module tree: TorchScript pickles each object once, so an object met twice (shared, or a cycle:
    exponential or endless to walk) is a crafted file."""
    if not isinstance(obj, TorchScriptObject) or not isinstance(obj.state, dict):
        return
    if id(obj) in seen:
        raise ValueError(f"its object at {prefix or 'the root'} is reached twice; a module tree has no shared objects")
    seen.add(id(obj))
    for name, value in obj.state.items():
        if isinstance(value, torch.Tensor):
            out[prefix + str(name)] = value
        else:
            _collect(value, f"{prefix}{name}.", out, seen)

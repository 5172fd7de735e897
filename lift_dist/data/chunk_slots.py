"""Shared-memory buffers for the image chunks loader workers send, reused once the main process has
copied a chunk out.

A tensor a DataLoader worker sends is moved into a new /dev/shm segment first: a copy, and a page
fault per 4 KiB on a fresh mapping in both processes -- about 0.25 ms per 224 px image, an eighth of
the worker's whole cost per image (benchmarks/data.py). A worker here writes its chunk straight into
one of its own shared buffers instead, which travels as a file descriptor (no copy); `rebatch`
marks the buffer free once the chunk is copied into a batch, and the worker writes the next chunk
into it. A buffer never marked free (a consumer that keeps chunks, or more chunks in flight than a
worker has buffers) is just not reused: the worker then sends a fresh tensor, as before.
"""

from __future__ import annotations

import multiprocessing
import threading

import torch

PER_WORKER = 8  # chunks in flight per worker: DataLoader's prefetch (4) plus those being re-cut
MAX_WORKERS = 64  # workers beyond this send fresh tensors


class ChunkSlots:
    def __init__(self):
        # 1 = the main process may still read the buffer. lock=False: a raw shared byte array goes to
        # fork, spawn and forkserver workers alike.
        self.busy = multiprocessing.RawArray("b", PER_WORKER * MAX_WORKERS)
        self._storages: dict[int, torch.UntypedStorage] = {}  # this worker's buffers, by slot
        self._fence = threading.Lock()

    def __getstate__(self):  # (spawned workers) the buffers and the lock stay in their own process
        return {"busy": self.busy}

    def __setstate__(self, state):
        self.busy, self._storages, self._fence = state["busy"], {}, threading.Lock()

    def stack(self, images: list[torch.Tensor], worker: int) -> tuple[torch.Tensor, int] | None:
        """(B, 3, H, W) channels-last batch of channels-last uint8 images in a free shared buffer of
        this worker, and its slot; None when there is none (or the images are not channels-last uint8
        (3, H, W): test-time ensembling's stacks of views go as fresh tensors)."""
        if images[0].dim() != 3:
            return None
        hwc = [im.permute(1, 2, 0) for im in images]
        if images[0].dtype != torch.uint8 or not all(h.is_contiguous() and h.shape == hwc[0].shape for h in hwc):
            return None
        shape = (len(hwc), *hwc[0].shape)
        slot = self._take(worker, shape[0] * shape[1] * shape[2] * shape[3])
        if slot is None:
            return None
        out = torch.empty(0, dtype=torch.uint8).set_(self._storages[slot], 0, shape)
        torch.stack(hwc, out=out)
        return out.permute(0, 3, 1, 2), slot

    def _take(self, worker: int, nbytes: int) -> int | None:
        if worker >= MAX_WORKERS:
            return None
        for slot in range(worker * PER_WORKER, (worker + 1) * PER_WORKER):
            if not self.busy[slot]:
                self._fence_memory()  # the buffer is written only after its free mark was read
                storage = self._storages.get(slot)
                if storage is None or storage.nbytes() < nbytes:
                    # Allocated in shared memory from the start, so sending it moves no bytes.
                    self._storages[slot] = torch.UntypedStorage._new_shared(nbytes)
                self.busy[slot] = 1
                return slot
        return None

    def release(self, slot: int) -> None:
        """Main process: the chunk in `slot` has been copied out; the worker may overwrite it."""
        if slot >= 0:
            self._fence_memory()  # every read of the buffer completes before the free mark is seen
            self.busy[slot] = 0

    def _fence_memory(self) -> None:
        # A lock's release/acquire pair is a full barrier (x86 keeps this order anyway; ARM may not).
        with self._fence:
            pass
        with self._fence:
            pass

"""Batches that a loader worker hands to the training process in shared memory it reuses.

torch's loader sends every tensor a worker returns through shared memory, each
as a file descriptor passed over a socket (a connection and a handshake per
tensor), in fresh shared memory whose every page the kernel allocates and
zeroes. For a packed corpus that costs a worker more than reading the batch.
So a worker keeps a few shared buffers (:class:`SharedBatchRing`) and lends one
per batch: every tensor of the batch is a view of it (:func:`batch_tensors`),
and the batch (:class:`LentBatch`) travels as the buffer's slot and the views'
layout, arriving as a plain dict. A buffer itself travels once, with its first
batch; the training process keeps it mapped until the worker exits.

A buffer comes back once the receiving process has freed the batch: every
tensor and view of it. That process gives each batch a storage of its own over
the buffer, notes it, and, as each later batch arrives, clears the flags of the
noted storages that are gone, in a small shared tensor the worker reads. A
worker whose buffers are all lent uses fresh shared memory (torch's way), so a
consumer that keeps batches is never handed overwritten ones.

Every batch a worker lends must be unpickled, in order, by one process, as
torch's loader does (it also drains a persistent worker's batches between epochs).
"""
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.multiprocessing.reductions import StorageWeakRef

# Buffers kept per worker: up to prefetch_factor (2) batches of a worker are in flight in torch's loader, one in
# fairseq's buffer, one in the trainer's step, and the one before it until the next batch's arrival frees its buffer.
RING_SLOTS = 6
# Shared memory a worker's ring may hold: batches larger than RING_BYTES / RING_SLOTS get fewer buffers.
RING_BYTES = 256 * 2**20
# Each tensor of a lent batch starts on a 64-byte boundary (a cache line; every dtype's alignment).
ALIGNMENT = 64


@dataclass
class BufferLease:
    """Buffer ``slot`` of the worker ring ``ring``, lent for one batch until ``flags[slot]`` is cleared.

    ``flags`` and ``storage`` travel only when the receiving process has not
    had them yet (the ring's first batch, a slot's new buffer); else None.
    """

    ring: Tuple[int, str]
    slot: int
    generation: int
    storage: torch.UntypedStorage
    new_flags: Optional[torch.Tensor]
    new_buffer: bool


class SharedBatchRing:
    """``slots`` reusable shared-memory buffers of one loader worker (see the module docstring)."""

    def __init__(self, slots: int = RING_SLOTS):
        self.pid = os.getpid()
        self.key = (self.pid, secrets.token_hex(4))
        # flags[k]: 0 when buffer k is free, else the generation of the batch it holds.
        self.flags = torch.zeros(slots, dtype=torch.int64).share_memory_()
        self.flags_sent = False
        self.buffers: List[Optional[torch.UntypedStorage]] = [None] * slots
        self.sent = [False] * slots
        self.generation = 0

    def take(self, nbytes: int) -> Optional[BufferLease]:
        """A free buffer of at least ``nbytes``, lent; None when every usable buffer is lent."""
        usable = min(len(self.buffers), RING_BYTES // max(nbytes, 1))
        free = (self.flags[:usable] == 0).nonzero()
        if len(free) == 0:
            return None
        slot = int(free[0])
        if self.buffers[slot] is None or self.buffers[slot].nbytes() < nbytes:
            # As large as the largest batch yet, so that batch sizes that vary do not keep replacing buffers.
            size = max([nbytes] + [buffer.nbytes() for buffer in self.buffers if buffer is not None])
            self.buffers[slot], self.sent[slot] = torch.UntypedStorage._new_shared(size), False
        self.generation += 1
        self.flags[slot] = self.generation
        lease = BufferLease(self.key, slot, self.generation, self.buffers[slot], None if self.flags_sent else self.flags, not self.sent[slot])
        self.flags_sent = self.sent[slot] = True
        return lease


_ring: Optional[SharedBatchRing] = None


def batch_tensors(specs: Sequence[Tuple[Tuple[int, ...], torch.dtype]]) -> Tuple[List[torch.Tensor], Optional[BufferLease]]:
    """Uninitialised tensors of the given (shape, dtype)s for one batch, and the lease of the buffer they are in.

    In a loader worker they are views of one buffer of the worker's
    :class:`SharedBatchRing` (or of fresh shared memory when every buffer is
    lent: lease None); return the batch as
    :class:`LentBatch` ``(batch, lease)``. Outside a worker they are private
    memory, lease None; numpy backs them with transparent huge pages where it
    can (fewer page faults than ``torch.empty``).
    """
    global _ring
    offsets, nbytes = [], 0
    for shape, dtype in specs:
        offsets.append(nbytes)
        nbytes += -(-int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size() // ALIGNMENT) * ALIGNMENT
    lease = None
    if torch.utils.data.get_worker_info() is None:
        storage = torch.from_numpy(np.empty(nbytes, dtype=np.uint8)).untyped_storage()
    else:
        if _ring is None or _ring.pid != os.getpid():
            _ring = SharedBatchRing()
        lease = _ring.take(nbytes)
        storage = lease.storage if lease is not None else torch.UntypedStorage._new_shared(nbytes)
    return [_view(storage, offset, dtype, shape) for offset, (shape, dtype) in zip(offsets, specs)], lease


def _view(storage: torch.UntypedStorage, byte_offset: int, dtype: torch.dtype, shape: Tuple[int, ...]) -> torch.Tensor:
    tensor = torch.empty(0, dtype=dtype)
    return tensor.set_(storage, byte_offset // tensor.element_size(), shape)


class LentBatch(dict):
    """A batch whose tensors are (some of them) views of a lent buffer; pickles as the lease and their layout.

    Unpickled (in the training process) it is a plain dict whose tensors are
    views of the buffer; the buffer returns to the worker once they are all
    freed. Nested dicts (``net_input``) are followed.
    """

    def __init__(self, batch: Dict, lease: BufferLease):
        super().__init__(batch)
        self.lease = lease

    def __reduce__(self):
        lease = self.lease
        buffer = lease.storage if lease.new_buffer else None
        return _received, (lease.ring, lease.slot, lease.generation, lease.new_flags, buffer, _layout(dict(self), lease.storage.data_ptr()))


@dataclass
class _ViewOf:
    """Where a tensor of a lent batch lies in its buffer."""

    byte_offset: int
    dtype: torch.dtype
    shape: Tuple[int, ...]


def _layout(batch: Dict, buffer: int) -> Dict:
    """``batch`` with each tensor that lies in the buffer at address ``buffer`` replaced by its :class:`_ViewOf`."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            value = _layout(value, buffer)
        elif isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == buffer and value.is_contiguous():
            value = _ViewOf(value.storage_offset() * value.element_size(), value.dtype, tuple(value.shape))
        out[key] = value
    return out


def _views(batch: Dict, storage: torch.UntypedStorage) -> Dict:
    return {
        key: _views(value, storage) if isinstance(value, dict)
        else _view(storage, value.byte_offset, value.dtype, value.shape) if isinstance(value, _ViewOf)
        else value
        for key, value in batch.items()
    }


# In the receiving process: each worker ring's flags and buffers (as numpy arrays, each batch's storage a new one
# over them), and (storage, flags, slot, generation) of every lent buffer not yet returned. Batches arrive in each
# loader's own thread where it has one (fairseq's buffer, pin memory), hence the lock.
_rings: Dict[Tuple[int, str], Tuple[torch.Tensor, Dict[int, np.ndarray]]] = {}
_lent: List[Tuple[StorageWeakRef, torch.Tensor, int, int]] = []
_lock = threading.Lock()


def _received(
    ring: Tuple[int, str], slot: int, generation: int, new_flags: Optional[torch.Tensor],
    new_buffer: Optional[torch.UntypedStorage], layout: Dict,
) -> Dict:
    with _lock:
        _return_freed()
        if new_flags is not None:
            # A new worker: forget those that have exited (their buffers are unmapped once their batches are freed).
            for known in [known for known in _rings if not _alive(known[0])]:
                del _rings[known]
            _rings[ring] = (new_flags, {})
        if ring not in _rings:
            raise RuntimeError(f"a batch of loader worker {ring[0]} arrived without its first: a process must unpickle a worker's batches in order")
        flags, buffers = _rings[ring]
        if new_buffer is not None:
            buffers[slot] = torch.empty(0, dtype=torch.uint8).set_(new_buffer).numpy()
        storage = torch.frombuffer(buffers[slot], dtype=torch.uint8).untyped_storage()
        _lent.append((StorageWeakRef(storage), flags, slot, generation))
    return _views(layout, storage)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _return_freed() -> None:
    """Return the buffers whose batches this process has freed (no tensor or view of them is left)."""
    kept = []
    for storage, flags, slot, generation in _lent:
        if not storage.expired():
            kept.append((storage, flags, slot, generation))
        elif int(flags[slot]) == generation:
            # A buffer is lent again only once its flag is cleared: only this generation's lease may clear it.
            flags[slot] = 0
    _lent[:] = kept

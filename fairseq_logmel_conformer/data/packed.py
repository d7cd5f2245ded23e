"""A packed corpus: decoded 16 kHz mono audio in a few large int16 shards plus an index, read by offset: no decoding.

``logmel-pack`` writes one from fairseq manifests, into a folder that stands
where the manifest folder stood (``task.data=PACKED_DIR``); per split:

* ``<split>.NNNNN.npy``: shards, numpy ``.npy`` files of int16 samples (a 128-byte
  header, then the clips one after the other), about ``--shard-mb`` each;
* ``<split>.index.npy``: one record per packed clip, in manifest order
  (:data:`INDEX_DTYPE`): its manifest entry (0-based; entry ``e`` is on manifest
  line ``e + 2`` and label line ``e + 1``), manifest size, shard, offset and
  length in samples, scale (sample value = int16 x scale) and CRC-32, and the
  end of its relative path in ``<split>.paths.npy`` (UTF-8 bytes);
* ``<split>.pack.json``: what the index and shards must be (each file's size
  and CRC-32), where they came from (source manifest, its SHA-256, audio root),
  and how many clips were left out. It is written last: a split is packed when,
  and only when, it exists.

Clips are stored as decoded by :func:`~.audio.read_audio` (any format, rate
and channel count -> mono at the target rate). Samples on the 16-bit grid (16-bit
sources at the target rate) are stored exactly (scale 2**-15); a clip that
would not fit (float sources above full scale, resampler overshoot) gets a
larger scale instead of being clipped; resampled audio is rounded to 16 bits
(error below 2**-16 of full scale).

Integrity: a shard is written under a temporary name, fsynced and renamed, and
is trusted only once ``<split>.pack.json`` lists it. Opening a split checks
every file's size and ``.npy`` header (a truncated or replaced file is named in
the error); CRC-32s are checked for the probed clips when a dataset is built,
for every byte by ``logmel-pack --check``, and never on the training read path:
one CRC of a 10 s clip costs as long as reading and converting it.
"""
import hashlib
import io
import json
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .audio import SIZE_TOLERANCE, AudioReadError, read_audio
from .manifest import PathList, parallel_imap, read_manifest

FORMAT = "logmel_packed_corpus"
VERSION = 1
SAMPLE_DTYPE = np.dtype("<i2")
INDEX_DTYPE = np.dtype(
    [
        ("entry", "<i8"),
        ("size", "<i8"),
        ("shard", "<i4"),
        ("offset", "<i8"),
        ("length", "<i8"),
        ("scale", "<f4"),
        ("crc32", "<u4"),
        ("path_end", "<i8"),
    ]
)
# Every shard's .npy header is this long (numpy pads a 1-D header to a multiple of 64 bytes; 128 fits any length).
HEADER_BYTES = 128
# Samples on the 16-bit grid are stored exactly with this scale (what soundfile reads 16-bit PCM as).
UNIT_SCALE = np.float32(2.0**-15)
DEFAULT_SHARD_MB = 1024


class PackedCorpusError(RuntimeError):
    """A packed corpus is incomplete, truncated or corrupt; the message names the file."""


def meta_path(folder: str, split: str) -> str:
    return os.path.join(folder, f"{split}.pack.json")


def is_packed(folder: str, split: str) -> bool:
    """Whether ``folder`` holds a packed ``split`` (its ``<split>.pack.json``)."""
    return os.path.isfile(meta_path(folder, split))


def packed_splits(folder: str) -> List[str]:
    return sorted(name[: -len(".pack.json")] for name in os.listdir(folder) if name.endswith(".pack.json"))


def crc32_of_file(path: str, start: int = 0, chunk: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as f:
        f.seek(start)
        while True:
            block = f.read(chunk)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def npy_header(num_samples: int) -> bytes:
    """The ``.npy`` header of a shard of ``num_samples`` int16 samples, exactly :data:`HEADER_BYTES` long."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": SAMPLE_DTYPE.str, "fortran_order": False, "shape": (num_samples,)})
    header = buffer.getvalue()
    if len(header) != HEADER_BYTES:
        raise AssertionError(f"a shard header of {len(header)} bytes, expected {HEADER_BYTES}")
    return header


# ----------------------------------------------------------------------------- reading


class PackedSplit:
    """One packed split, opened: the index (memory-mapped), the shards (opened when first read).

    Opening checks that the index, the paths and every shard have the size and
    ``.npy`` header ``<split>.pack.json`` says, raising
    :class:`PackedCorpusError` naming the first file that does not.
    """

    def __init__(self, folder: str, split: str):
        self.folder = folder
        self.split = split
        self.meta_file = meta_path(folder, split)
        try:
            with open(self.meta_file) as f:
                self.meta = json.load(f)
        except (OSError, ValueError) as error:
            raise PackedCorpusError(f"cannot read {self.meta_file}: {error}") from error
        if self.meta.get("format") != FORMAT or self.meta.get("version") != VERSION:
            raise PackedCorpusError(
                f"{self.meta_file} is not a {FORMAT} version {VERSION} (format {self.meta.get('format')!r}, "
                f"version {self.meta.get('version')!r}); repack with this version's logmel-pack"
            )
        self.sample_rate = int(self.meta["sample_rate"])
        self.source_manifest = self.meta["source_manifest"]
        self.source_root = self.meta["source_root"]
        self.num_entries = int(self.meta["entries"])
        self.index = self._open_array(self.meta["index"], INDEX_DTYPE, (int(self.meta["clips"]),))
        paths = self._open_array(self.meta["paths"], np.dtype(np.uint8), None)
        ends = self.index["path_end"]
        self.paths = PathList(memoryview(paths), np.concatenate([np.zeros(1, np.int64), ends[:-1]]), ends)
        self.shard_files = [os.path.join(folder, shard["file"]) for shard in self.meta["shards"]]
        for shard, path in zip(self.meta["shards"], self.shard_files):
            self._check_file(path, shard["bytes"])
            self._check_shard_header(path, shard["samples"])
        self._shards: List[Optional[np.ndarray]] = [None] * len(self.shard_files)
        self._files: List[Optional[io.FileIO]] = [None] * len(self.shard_files)

    def __reduce__(self):
        # Sent to a loader worker that does not fork (spawn, forkserver): the worker opens the split itself,
        # with the same checks, rather than receiving copies of memory-mapped arrays and open files.
        return PackedSplit, (self.folder, self.split)

    def _check_file(self, path: str, expected_bytes: int) -> None:
        if not os.path.isfile(path):
            raise PackedCorpusError(f"{path} is missing; {self.meta_file} lists it. {self.repair_hint()}")
        size = os.path.getsize(path)
        if size != expected_bytes:
            what = "truncated" if size < expected_bytes else "longer than written"
            raise PackedCorpusError(
                f"{path} is {what}: {size} bytes, {self.meta_file} says {expected_bytes}. {self.repair_hint()}"
            )

    def _check_shard_header(self, path: str, samples: int) -> None:
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        if header != npy_header(samples):
            raise PackedCorpusError(
                f"{path} is corrupt: its .npy header is not that of {samples} int16 samples. {self.repair_hint()}"
            )

    def _open_array(self, described: Dict, dtype: np.dtype, shape: Optional[Tuple[int, ...]]) -> np.ndarray:
        path = os.path.join(self.folder, described["file"])
        self._check_file(path, described["bytes"])
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise PackedCorpusError(f"{path} is corrupt: {error}. {self.repair_hint()}") from error
        if array.dtype != dtype or array.ndim != 1 or (shape is not None and array.shape != shape):
            raise PackedCorpusError(
                f"{path} is corrupt: it holds {array.dtype} {array.shape}, expected {dtype} {shape or '(n,)'}. {self.repair_hint()}"
            )
        return array

    def repair_hint(self) -> str:
        return (
            f"Copy the file again, or run `logmel-pack --check {self.folder}` to list every damaged shard and "
            f"`logmel-pack {self.source_manifest} --out {self.folder} --overwrite` to pack the split again."
        )

    def __len__(self) -> int:
        return len(self.index)

    def shard(self, number: int) -> np.ndarray:
        """Shard ``number``'s samples, memory-mapped (int16, read-only): what :meth:`read_into` copies from where
        ``os.preadv`` is missing."""
        mapped = self._shards[number]
        if mapped is None:
            # A plain ndarray view: slicing a np.memmap costs microseconds of subclass bookkeeping.
            mapped = self._shards[number] = np.load(self.shard_files[number], mmap_mode="r").view(np.ndarray)
        return mapped

    def read_into(self, number: int, begin: int, out: np.ndarray) -> None:
        """Copy ``len(out)`` samples of shard ``number``, from sample ``begin``, into ``out`` (contiguous int16).

        One positioned read (``os.preadv``) from the page cache into ``out``. A
        memory-mapped slice costs more: a process faults in each page the first
        time it touches it (a loader worker starts with no pages mapped, and a
        corpus larger than memory keeps evicting them), and a shard truncated
        since it was opened raises SIGBUS there, where a read raises
        :class:`PackedCorpusError` naming it.
        """
        if not hasattr(os, "preadv"):
            out[:] = self.shard(number)[begin : begin + len(out)]
            return
        file = self._files[number]
        if file is None:
            # Unbuffered, positioned reads only: a worker forked with it open shares no file position with its parent.
            file = self._files[number] = open(self.shard_files[number], "rb", buffering=0)
        view = memoryview(out).cast("B")
        start, done = HEADER_BYTES + SAMPLE_DTYPE.itemsize * begin, 0
        while done < len(view):
            got = os.preadv(file.fileno(), [view[done:]], start + done)
            if got == 0:
                raise PackedCorpusError(
                    f"{self.shard_files[number]} ends at byte {start + done}, before sample {begin + len(out)}: "
                    f"truncated since it was opened. {self.repair_hint()}"
                )
            done += got

    def clip_path(self, clip: int) -> str:
        return os.path.join(self.source_root, self.paths[clip])

    def clip_location(self, clip: int) -> str:
        """``source_manifest:LINE`` of clip ``clip`` (the manifest it was packed from)."""
        return f"{self.source_manifest}:{int(self.index['entry'][clip]) + 2}"

    def describe_clip(self, clip: int) -> str:
        record = self.index[clip]
        return (
            f"{self.clip_path(clip)}, packed in {self.shard_files[int(record['shard'])]} "
            f"(samples {int(record['offset'])}-{int(record['offset']) + int(record['length'])})"
        )

    def clip_crc_problem(self, clip: int) -> Optional[str]:
        """None if clip ``clip``'s samples have the CRC-32 of the index, else a message naming its shard."""
        record = self.index[clip]
        samples = np.empty(int(record["length"]), dtype=SAMPLE_DTYPE)
        self.read_into(int(record["shard"]), int(record["offset"]), samples)
        if zlib.crc32(samples) == int(record["crc32"]):
            return None
        return f"{self.describe_clip(clip)}: corrupt, its samples do not have the CRC-32 of the index"


def check_packed(folder: str, split: str) -> List[str]:
    """Every problem of a packed split: missing or truncated files, and (by CRC-32) corrupt shards and the clips in them."""
    try:
        packed = PackedSplit(folder, split)
    except PackedCorpusError as error:
        return [str(error)]
    problems = []
    for described in (packed.meta["index"], packed.meta["paths"]):
        path = os.path.join(folder, described["file"])
        if crc32_of_file(path) != described["crc32"]:
            problems.append(f"{path} is corrupt: its CRC-32 differs from {packed.meta_file}'s. {packed.repair_hint()}")
    if problems:
        return problems
    shards = packed.index["shard"]
    for number, (shard, path) in enumerate(zip(packed.meta["shards"], packed.shard_files)):
        if crc32_of_file(path, HEADER_BYTES) == shard["crc32"]:
            continue
        clips = np.flatnonzero(shards == number)
        damaged = [packed.clip_location(c) + ": " + p for c in clips for p in [packed.clip_crc_problem(int(c))] if p]
        problems.append(
            f"{path} is corrupt: its samples' CRC-32 differs from {packed.meta_file}'s; {len(damaged)} of its "
            f"{len(clips)} clips are damaged. {packed.repair_hint()}"
        )
        problems.extend("  " + line for line in damaged)
    return problems


# ----------------------------------------------------------------------------- writing


def quantize(samples: np.ndarray) -> Tuple[np.ndarray, np.float32]:
    """float32 samples -> (int16 samples, scale) with samples ~= int16 x scale.

    Samples on the 16-bit grid come back exactly (scale 2**-15); samples that
    would not fit in 16 bits at that scale get the smallest scale that fits them.
    """
    scaled = np.rint(samples * np.float32(32768.0))
    if scaled.size == 0 or (scaled.max() <= 32767 and scaled.min() >= -32768):
        return scaled.astype(SAMPLE_DTYPE), UNIT_SCALE
    scale = np.float32(np.abs(samples).max() / 32767.0)
    return np.clip(np.rint(samples / scale), -32768, 32767).astype(SAMPLE_DTYPE), scale


def _pack_clip(job: Tuple[str, int, int]) -> Tuple[Optional[np.ndarray], float, int, Optional[str]]:
    """Worker: (path, manifest size, rate) -> (int16 samples, scale, CRC-32, None) or (None, 0, 0, why not)."""
    path, expected, sample_rate = job
    try:
        samples = read_audio(path, sample_rate).numpy()
    except AudioReadError as error:
        return None, 0.0, 0, str(error)
    if abs(samples.shape[0] - expected) > SIZE_TOLERANCE:
        return None, 0.0, 0, (
            f"{path} has {samples.shape[0]} samples at {sample_rate} Hz but the manifest says {expected}; "
            "rebuild the manifest with logmel-manifest (it counts samples at the target rate)"
        )
    quantized, scale = quantize(samples)
    return quantized, float(scale), zlib.crc32(quantized), None


def _fsync_folder(folder: str) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_atomically(path: str, write) -> None:
    """``write(file)`` to ``path.partial``, fsync, rename over ``path``: a reader never sees half a file."""
    partial = path + ".partial"
    with open(partial, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def _write_json(path: str, payload: Dict) -> None:
    _write_atomically(path, lambda f: f.write((json.dumps(payload, indent=1) + "\n").encode()))


def _write_npy(path: str, array: np.ndarray) -> Dict:
    _write_atomically(path, lambda f: np.save(f, array))
    return {"file": os.path.basename(path), "bytes": os.path.getsize(path), "crc32": crc32_of_file(path)}


class ShardWriter:
    """Appends clips to ``path.partial`` behind a placeholder header; :meth:`finish` writes the header, fsyncs, renames."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path + ".partial", "wb")
        self.file.write(b"\0" * HEADER_BYTES)
        self.samples = 0
        self.crc = 0

    def append(self, samples: np.ndarray) -> int:
        """Write int16 ``samples``; return their offset in the shard (in samples)."""
        offset = self.samples
        self.file.write(samples.data)
        self.crc = zlib.crc32(samples, self.crc)
        self.samples += samples.shape[0]
        return offset

    def finish(self) -> Dict:
        self.file.seek(0)
        self.file.write(npy_header(self.samples))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path + ".partial", self.path)
        _fsync_folder(os.path.dirname(os.path.abspath(self.path)))
        return {"file": os.path.basename(self.path), "bytes": HEADER_BYTES + 2 * self.samples, "samples": self.samples, "crc32": self.crc}


def plan_shards(sizes: np.ndarray, shard_bytes: int) -> List[int]:
    """Entry boundaries ``[0, b1, ..., n]``: each shard takes whole clips until it holds ``shard_bytes`` (by manifest sizes)."""
    bounds, filled = [0], 0
    for entry, size in enumerate(sizes.tolist()):
        if filled >= shard_bytes:
            bounds.append(entry)
            filled = 0
        filled += 2 * size
    if bounds[-1] != len(sizes) or len(bounds) == 1:
        bounds.append(len(sizes))
    return bounds


class PackExistsError(ValueError):
    """The output folder holds a packed split, or an interrupted pack, of another manifest or other settings."""


@dataclass
class SplitReport:
    """What :func:`pack_split` did for one split."""

    split: str
    clips: int
    entries: int
    unreadable: List[str]
    samples: int
    shards: int
    resumed_shards: int = 0
    skipped: bool = False
    seconds: float = 0.0


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_files(out: str, split: str) -> List[str]:
    """The files a (possibly partial) packed ``split`` has in ``out``."""
    pattern = re.compile(rf"{re.escape(split)}\.(\d{{5}}\.npy|index\.npy|paths\.npy|pack\.json)(\.partial)?")
    return [os.path.join(out, name) for name in os.listdir(out) if pattern.fullmatch(name)]


def remove_split(out: str, split: str) -> None:
    for path in _split_files(out, split):
        os.remove(path)
    shutil.rmtree(os.path.join(out, f"{split}.packing"), ignore_errors=True)


def pack_split(
    manifest_path: str,
    out: str,
    split: str,
    jobs: int,
    shard_mb: float = DEFAULT_SHARD_MB,
    sample_rate: int = 16000,
    overwrite: bool = False,
) -> SplitReport:
    """Pack the clips of ``manifest_path`` into ``out`` as ``split``; resume an interrupted pack of the same manifest.

    Clips are decoded in ``jobs`` processes and written in manifest order by
    this one; each finished shard is recorded in ``<split>.packing/`` and kept,
    so a rerun after an interruption (even a SIGKILL) decodes only the shards
    not yet finished. Unreadable clips, and clips whose length disagrees with
    the manifest, are left out and returned (``manifest:LINE: why``); the index
    keeps every other clip's manifest entry, so label files stay aligned.
    """
    start_time = time.perf_counter()
    manifest = read_manifest(manifest_path)
    digest = _sha256(manifest_path)
    os.makedirs(out, exist_ok=True)
    settings = {
        "source_sha256": digest,
        "sample_rate": sample_rate,
        "shard_bytes": int(shard_mb * 2**20),
    }
    work = os.path.join(out, f"{split}.packing")
    if is_packed(out, split):
        with open(meta_path(out, split)) as f:
            meta = json.load(f)
        if not overwrite and {k: meta.get(k) for k in settings} == settings:
            shutil.rmtree(work, ignore_errors=True)  # left behind if the last run stopped right after its pack.json
            return SplitReport(split, meta["clips"], meta["entries"], meta["unreadable_clips"], meta["samples"], len(meta["shards"]), skipped=True)
        if not overwrite:
            raise PackExistsError(
                f"{meta_path(out, split)} is a packed {split} of another manifest or other settings "
                f"(source {meta.get('source_manifest')}); pass --overwrite to replace it, or choose another --out"
            )
        remove_split(out, split)
    plan_file = os.path.join(work, "plan.json")
    if os.path.isfile(plan_file):
        with open(plan_file) as f:
            plan = json.load(f)
        if {k: plan.get(k) for k in settings} != settings:
            if not overwrite:
                raise PackExistsError(
                    f"{work} holds an interrupted pack of {plan.get('source_manifest')} with other settings "
                    "(or a manifest changed since); pass --overwrite to discard it"
                )
            remove_split(out, split)
    if not os.path.isfile(plan_file):
        os.makedirs(work, exist_ok=True)
        bounds = plan_shards(manifest.sizes, settings["shard_bytes"])
        _write_json(plan_file, {**settings, "source_manifest": os.path.abspath(manifest_path), "bounds": bounds})
    with open(plan_file) as f:
        bounds = json.load(f)["bounds"]
    num_shards = len(bounds) - 1
    shard_path = lambda number: os.path.join(out, f"{split}.{number:05d}.npy")  # noqa: E731
    record_path = lambda number: os.path.join(work, f"{number:05d}.json")  # noqa: E731

    def finished(number: int) -> bool:
        if not os.path.isfile(record_path(number)):
            return False
        with open(record_path(number)) as f:
            record = json.load(f)
        return os.path.isfile(shard_path(number)) and os.path.getsize(shard_path(number)) == record["shard"]["bytes"]

    todo = [number for number in range(num_shards) if not finished(number)]
    jobs_list = [
        (manifest.audio_path(entry), int(manifest.sizes[entry]), sample_rate) for number in todo for entry in range(bounds[number], bounds[number + 1])
    ]
    results = parallel_imap(_pack_clip, jobs_list, jobs, f"packing {split}", unit="clip", chunksize=16)
    try:
        for number in todo:
            writer = ShardWriter(shard_path(number))
            clips, unreadable = [], []
            for entry in range(bounds[number], bounds[number + 1]):
                samples, scale, crc, error = next(results)
                if error is not None:
                    unreadable.append([entry, f"{manifest.location(entry)}: {error}"])
                    continue
                offset = writer.append(samples)
                clips.append([entry, int(manifest.sizes[entry]), offset, int(samples.shape[0]), scale, crc])
            shard = writer.finish()
            _write_json(record_path(number), {"shard": shard, "clips": clips, "unreadable": unreadable})
    finally:
        results.close()
    return _finish_split(manifest, out, split, settings, bounds, work, todo, start_time)


def _finish_split(manifest, out: str, split: str, settings: Dict, bounds: List[int], work: str, todo: List[int], start_time: float) -> SplitReport:
    """Assemble the index from the shard records, write it and ``<split>.pack.json`` (last), remove the work folder."""
    records = []
    for number in range(len(bounds) - 1):
        with open(os.path.join(work, f"{number:05d}.json")) as f:
            records.append(json.load(f))
    clips = [(number, clip) for number, record in enumerate(records) for clip in record["clips"]]
    unreadable = [message for record in records for _, message in record["unreadable"]]
    index = np.zeros(len(clips), dtype=INDEX_DTYPE)
    paths = [manifest.files[clip[0]].encode("utf-8") for _, clip in clips]
    if clips:
        numbers, rows = zip(*clips)
        entry, size, offset, length, scale, crc = (np.array(column) for column in zip(*rows))
        index["entry"], index["size"], index["shard"], index["offset"] = entry, size, numbers, offset
        index["length"], index["scale"], index["crc32"] = length, scale, crc
        index["path_end"] = np.cumsum([len(p) for p in paths])
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "split": split,
        **settings,
        "dtype": SAMPLE_DTYPE.str,
        "source_manifest": os.path.abspath(manifest.path),
        "source_root": manifest.root,
        "entries": len(manifest),
        "clips": len(clips),
        "unreadable": len(unreadable),
        "unreadable_clips": unreadable,
        "samples": int(sum(record["shard"]["samples"] for record in records)),
        "index": _write_npy(os.path.join(out, f"{split}.index.npy"), index),
        "paths": _write_npy(os.path.join(out, f"{split}.paths.npy"), np.frombuffer(b"".join(paths), dtype=np.uint8)),
        "shards": [record["shard"] for record in records],
    }
    _write_json(meta_path(out, split), meta)
    shutil.rmtree(work)
    return SplitReport(
        split, len(clips), len(manifest), unreadable, meta["samples"], len(records),
        resumed_shards=len(records) - len(todo), seconds=time.perf_counter() - start_time,
    )

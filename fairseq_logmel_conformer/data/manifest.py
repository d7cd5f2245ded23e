"""fairseq audio manifests: reading, writing from a folder of audio, and checking every clip.

A manifest is a text file: the absolute audio root on the first line, then one
``relative/path<TAB>num_samples`` per clip, the length counted at the training
sample rate (files at other rates are resampled when read). ``logmel-manifest``
and ``logmel-prepare`` write them with :func:`probe_files` and
:func:`write_manifest`; training reads them with :func:`read_manifest`.

A read manifest is held in arrays, not Python objects: the file's bytes plus
offsets for the paths, a numpy array for the sizes. Its memory does not grow
with the number of Python objects, and loader workers forked from the
training process share its pages instead of copying them (touching a Python
string writes its reference count, which copies the page it lives on into
every worker that reads it).
"""
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
import torch
from tqdm import tqdm

from .audio import SIZE_TOLERANCE, AudioReadError, num_samples_at_rate, read_audio, too_short

T = TypeVar("T")
R = TypeVar("R")


class PathList(Sequence[str]):
    """An immutable list of strings stored as one UTF-8 buffer and (start, end) byte offsets.

    It behaves as a read-only ``List[str]`` (indexing, slicing, iteration,
    ``len``, comparison with a list) and costs ``len(buffer) + 2 * n * offset
    bytes`` whatever ``n`` is: no Python object per entry.
    """

    def __init__(self, buffer, starts: np.ndarray, ends: np.ndarray):
        """``buffer``: bytes or any buffer (a memoryview of a memory-mapped file); string i is ``buffer[starts[i]:ends[i]]``."""
        if len(starts) != len(ends):
            raise ValueError(f"{len(starts)} starts but {len(ends)} ends")
        self._buffer = buffer
        self._starts = starts
        self._ends = ends

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> "PathList":
        encoded = [s.encode("utf-8") for s in strings]
        ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        starts = ends - np.array([len(e) for e in encoded], dtype=np.int64)
        return cls(b"".join(encoded), *_narrow(starts, ends))

    @property
    def nbytes(self) -> int:
        """Bytes held: the buffer and the offsets."""
        return len(self._buffer) + self._starts.nbytes + self._ends.nbytes

    def __len__(self) -> int:
        return len(self._starts)

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return str(self._buffer[self._starts[index] : self._ends[index]], "utf-8")

    def __iter__(self) -> Iterator[str]:
        buffer = self._buffer
        for start, end in zip(self._starts.tolist(), self._ends.tolist()):
            yield str(buffer[start:end], "utf-8")

    def __eq__(self, other) -> bool:
        if isinstance(other, (PathList, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        shown = ", ".join(repr(s) for s in self[:3])
        return f"PathList([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} entries)"


def _narrow(*offsets: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Byte offsets as uint32 when they fit (half the memory), else int64."""
    largest = max((int(o.max()) for o in offsets if len(o)), default=0)
    dtype = np.uint32 if largest < 2**32 else np.int64
    return tuple(o.astype(dtype) for o in offsets)


@dataclass
class Manifest:
    """A fairseq audio manifest: a root folder, then one ``relative/path<TAB>num_samples`` per line.

    ``files`` is a :class:`PathList` (a read-only list of str), ``sizes`` an
    int64 numpy array; lists given to the constructor are converted.
    ``line_numbers`` holds the 1-based line of each entry when some lines were
    left out (see :func:`read_manifest`); otherwise entry ``i`` is on line ``i + 2``.
    """

    path: str
    root: str
    files: PathList
    sizes: np.ndarray
    line_numbers: Optional[np.ndarray] = None

    def __post_init__(self):
        if not isinstance(self.files, PathList):
            self.files = PathList.from_strings(self.files)
        self.sizes = np.asarray(self.sizes, dtype=np.int64)
        if self.line_numbers is not None:
            self.line_numbers = np.asarray(self.line_numbers, dtype=np.int64)
        if len(self.files) != len(self.sizes):
            raise ValueError(f"{len(self.files)} files but {len(self.sizes)} sizes")

    def __len__(self) -> int:
        return len(self.sizes)

    def audio_path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    def line_number(self, index: int) -> int:
        """1-based line of entry ``index`` in the manifest file."""
        return int(self.line_numbers[index]) if self.line_numbers is not None else index + 2

    def location(self, index: int) -> str:
        """``manifest.tsv:LINE``, for messages about entry ``index``."""
        return f"{self.path}:{self.line_number(index)}"


# What str.splitlines() breaks lines at besides "\n" (in UTF-8): their files take the line-by-line parser.
_OTHER_LINE_BREAKS = (b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x1d", b"\x1e")
_OTHER_LINE_BREAKS_UTF8 = (b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9")
# More digits than this could overflow int64; such a line takes the line-by-line parser (and its error).
_MAX_DIGITS = 18
# Lines whose numbers are parsed at once: bounds the temporary arrays (about 50 bytes a digit).
_LINES_PER_CHUNK = 1 << 18


def _parse_entries(data: bytes, body_start: int) -> Optional[Tuple[PathList, np.ndarray]]:
    """The entries of ``data[body_start:]`` with numpy, if every line is a well-formed ``path<TAB>digits``; else None.

    No Python object is made per line, so a 2-million-line manifest parses in
    about a second. Anything unusual (a malformed line, spaces around the
    number, other line breaks) returns None: the line-by-line parser then
    handles the file and names the line.
    """
    # bytes.find is a memchr-speed scan (a regular expression takes seconds on 100 MB).
    breaks = _OTHER_LINE_BREAKS + (() if data.isascii() else _OTHER_LINE_BREAKS_UTF8)
    if any(data.find(b, body_start) >= 0 for b in breaks):
        return None
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer[body_start:] == 10) + body_start
    if len(data) > body_start and data[-1:] != b"\n":
        ends = np.append(ends, len(data))
    if len(ends) == 0:
        return PathList(b"", np.zeros(0, np.uint32), np.zeros(0, np.uint32)), np.zeros(0, np.int64)
    starts = np.empty_like(ends)
    starts[0] = body_start
    starts[1:] = ends[:-1] + 1
    tabs = np.flatnonzero(buffer[body_start:] == 9) + body_start
    # Exactly one tab per line, after a non-empty path and before 1 to _MAX_DIGITS digits.
    if len(tabs) != len(ends):
        return None
    digits = ends - tabs - 1
    if (tabs < starts).any() or (tabs >= ends).any() or (tabs == starts).any() or (digits < 1).any() or (digits > _MAX_DIGITS).any():
        return None
    sizes = np.empty(len(ends), dtype=np.int64)
    for first_line in range(0, len(ends), _LINES_PER_CHUNK):
        chunk = slice(first_line, first_line + _LINES_PER_CHUNK)
        parsed = _parse_numbers(buffer, tabs[chunk] + 1, ends[chunk])
        if parsed is None:
            return None
        sizes[chunk] = parsed
    return PathList(data, *_narrow(starts, tabs)), sizes


def _parse_numbers(buffer: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Optional[np.ndarray]:
    """The decimal numbers in ``buffer[starts[i]:ends[i]]`` (1 to _MAX_DIGITS bytes each), or None if one is not all digits."""
    digits = ends - starts
    line_of = np.repeat(np.arange(len(starts)), digits)
    first = np.cumsum(digits) - digits
    position = np.arange(len(line_of)) - first[line_of] + starts[line_of]
    values = buffer[position].astype(np.int64) - 48
    if (values < 0).any() or (values > 9).any():
        return None
    # Each digit weighs 10 ** (its place counted from the end of its number).
    values *= 10 ** (ends[line_of] - position - 1)
    return np.add.reduceat(values, first)


def read_manifest(path: str, problems: Optional[List[str]] = None) -> Manifest:
    """Parse a manifest, raising ``ValueError`` that names the file and line of any malformed entry.

    With a ``problems`` list, malformed entries are described there instead and
    left out, so that every problem of the file can be reported at once; a
    missing or malformed root line still raises, since no entry can be located
    without it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    # The whole file must be UTF-8, as when it was read as text (bytes.isascii is the quick check); entries stay bytes.
    if not data.isascii():
        data.decode("utf-8")
    text_of_root = data[: data.find(b"\n")] if b"\n" in data else data
    root_lines = text_of_root.decode("utf-8").splitlines()
    if not root_lines or not root_lines[0].strip():
        raise ValueError(f"{path}:1: manifest must start with the root folder of the audio files")
    root = root_lines[0].strip()
    if "\t" in root:
        raise ValueError(f"{path}:1: expected the root folder, got an entry {root!r}; is the root line missing?")
    if len(root_lines) == 1 and b"\n" in data:
        parsed = _parse_entries(data, len(text_of_root) + 1)
        if parsed is not None:
            return Manifest(path=path, root=root, files=parsed[0], sizes=parsed[1])
    return _read_manifest_lines(path, data.decode("utf-8"), root, problems)


def _read_manifest_lines(path: str, text: str, root: str, problems: Optional[List[str]]) -> Manifest:
    """The line-by-line parser: any manifest, with a message naming each malformed line."""
    lines = text.splitlines()
    files, sizes, line_numbers = [], [], []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip().isdigit():
            message = f"{path}:{line_number}: expected 'relative/path<TAB>num_samples', got {line!r}"
            if problems is None:
                raise ValueError(message)
            problems.append(message)
            continue
        files.append(fields[0])
        sizes.append(int(fields[1]))
        line_numbers.append(line_number)
    consecutive = line_numbers == list(range(2, len(files) + 2))
    return Manifest(path=path, root=root, files=files, sizes=sizes, line_numbers=None if consecutive else line_numbers)


def write_manifest(path: str, root: str, entries: Sequence[Tuple[str, int]]) -> None:
    """Write ``root`` and one ``relative<TAB>num_samples`` line per entry, atomically (a reader never sees half)."""
    partial = path + ".partial"
    with open(partial, "w") as f:
        print(root, file=f)
        for relative, num_samples in entries:
            print(f"{relative}\t{num_samples}", file=f)
    os.replace(partial, path)


def find_audio(root: str, extensions: Sequence[str]) -> List[str]:
    """Paths relative to ``root`` of the files under it (recursively, links followed) ending in ``extensions``, sorted."""
    suffixes = tuple("." + ext.lower().lstrip(".") for ext in extensions)
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found.extend(os.path.relpath(os.path.join(folder, n), root) for n in names if n.lower().endswith(suffixes))
    return sorted(found)


def parallel_map(function: Callable[[T], R], jobs: Sequence[T], processes: int, description: str) -> List[R]:
    """``[function(job) for job in jobs]`` in ``processes`` worker processes (one torch thread each).

    A progress bar with rate and time left shows on a terminal (stderr), not in logs.
    """
    return list(parallel_imap(function, jobs, processes, description))


def parallel_imap(
    function: Callable[[T], R], jobs: Sequence[T], processes: int, description: str, unit: str = "file", chunksize: int = 64
) -> Iterator[R]:
    """:func:`parallel_map` as a generator: results in input order, each as soon as it and those before it are done.

    For results too large to hold all at once (decoded audio). ``chunksize``
    caps the jobs a worker takes at a time.
    """
    with tqdm(total=len(jobs), desc=description, unit=unit, disable=None, file=sys.stderr) as progress:
        if processes <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield function(job)
                progress.update()
            return
        chunksize = max(1, min(chunksize, len(jobs) // (4 * processes)))
        pool = ProcessPoolExecutor(processes, initializer=torch.set_num_threads, initargs=(1,))
        try:
            for result in pool.map(function, jobs, chunksize=chunksize):
                yield result
                progress.update()
        finally:
            # A consumer that stops early (an error, Ctrl-C) does not wait for the jobs it will not read.
            pool.shutdown(wait=True, cancel_futures=True)


def default_jobs() -> int:
    """The CPUs this process may run on: the default number of parallel processes of every command."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _probe(job: Tuple[str, str, int]) -> Tuple[str, Optional[int], Optional[str]]:
    root, relative, sample_rate = job
    try:
        return relative, num_samples_at_rate(os.path.join(root, relative), sample_rate), None
    except AudioReadError as error:
        return relative, None, str(error)


def probe_files(root: str, files: Sequence[str], sample_rate: int, jobs: int) -> Tuple[List[Tuple[str, int]], List[str]]:
    """Read every file's header: ([(relative path, num samples at ``sample_rate``)], [error messages]), in input order."""
    results = parallel_map(_probe, [(root, f, sample_rate) for f in files], jobs, "reading headers")
    readable = [(f, n) for f, n, error in results if error is None]
    errors = [error for _, _, error in results if error is not None]
    return readable, errors


@dataclass
class BuildReport:
    """What :func:`build_manifests` wrote and left out, and how fast it read the headers."""

    train: int
    valid: int
    problems: List[str]
    unreadable: int
    short: int
    files: int
    seconds: float


class SplitExistsError(ValueError):
    """The destination already holds a different train/valid split."""


def _existing_split(dest: str) -> Optional[Tuple[set, set]]:
    paths = [os.path.join(dest, f"{split}.tsv") for split in ("train", "valid")]
    if not all(os.path.isfile(path) for path in paths):
        return None
    return tuple(set(read_manifest(path).files) for path in paths)


def build_manifests(
    audio_dir: str,
    dest: str,
    valid_percent: float,
    seed: int,
    sample_rate: int,
    min_samples: int,
    extensions: Sequence[str],
    jobs: int,
    overwrite: bool = False,
) -> BuildReport:
    """Write ``train.tsv``, ``valid.tsv`` and ``unreadable.txt`` in ``dest`` for the audio under ``audio_dir``.

    Clips that cannot be opened, or are shorter than ``min_samples``, are left
    out and listed in ``unreadable.txt``. Raises :class:`SplitExistsError` if
    ``dest`` holds a train/valid split that differs from the new one (another
    seed or fraction, or other files), unless ``overwrite``: runs trained on the
    old split would otherwise validate on clips they trained on.
    """
    root = os.path.realpath(audio_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"audio folder {audio_dir} does not exist")
    files = find_audio(root, extensions)
    if not files:
        raise FileNotFoundError(f"no files ending in {','.join(extensions)} under {root}")
    start = time.perf_counter()
    readable, errors = probe_files(root, files, sample_rate, jobs)
    seconds = time.perf_counter() - start
    short = [(f, n) for f, n in readable if too_short(n, min_samples, sample_rate)]
    readable = [(f, n) for f, n in readable if not too_short(n, min_samples, sample_rate)]
    picked = set(random.Random(seed).sample(range(len(readable)), round(len(readable) * valid_percent)))
    train = [entry for i, entry in enumerate(readable) if i not in picked]
    valid = [entry for i, entry in enumerate(readable) if i in picked]
    existing = _existing_split(dest)
    if existing is not None and not overwrite and existing != ({f for f, _ in train}, {f for f, _ in valid}):
        moved = len(existing[1] ^ {f for f, _ in valid})
        raise SplitExistsError(
            f"{dest} already holds a train/valid split that differs from this one ({len(existing[0])} train and "
            f"{len(existing[1])} valid clips there, {len(train)} and {len(valid)} now; {moved} clips change sides). "
            "Runs trained on the old split would validate on clips they trained on. Pass --overwrite to replace it, "
            "or choose another --dest."
        )
    os.makedirs(dest, exist_ok=True)
    write_manifest(os.path.join(dest, "train.tsv"), root, train)
    write_manifest(os.path.join(dest, "valid.tsv"), root, valid)
    problems = errors + [f"{os.path.join(root, f)}: {too_short(n, min_samples, sample_rate)}" for f, n in short]
    with open(os.path.join(dest, "unreadable.txt"), "w") as f:
        f.writelines(problem + "\n" for problem in problems)
    return BuildReport(len(train), len(valid), problems, len(errors), len(short), len(files), seconds)


@dataclass
class CheckReport:
    """Outcome of :func:`check_manifest`: problems (each ``MANIFEST:LINE: ...``) and notes (not problems)."""

    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _check_clip(job: Tuple[str, int, int, int]) -> Tuple[List[str], List[str]]:
    path, expected, sample_rate, min_samples = job
    try:
        samples = read_audio(path, sample_rate)
    except AudioReadError as error:
        return [str(error)], []
    problems, notes = [], []
    short = too_short(samples.numel(), min_samples, sample_rate)
    if short:
        problems.append(f"{path}: {short}")
    if abs(samples.numel() - expected) > SIZE_TOLERANCE:
        problems.append(f"{path}: the manifest says {expected} samples, the file has {samples.numel()} at {sample_rate} Hz")
    if not samples.any():
        notes.append(f"{path}: digital silence (every sample is zero)")
    return problems, notes


def _check_labels(manifest_path: str, num_entries: int) -> List[str]:
    """The first problem of ``<split>.labels`` against ``labels.txt`` next to the manifest, if both exist."""
    from .labels import LabelVocabulary, read_label_file

    folder, name = os.path.split(manifest_path)
    labels_path = os.path.join(folder, os.path.splitext(name)[0] + ".labels")
    vocabulary_path = os.path.join(folder, "labels.txt")
    if not (os.path.isfile(labels_path) and os.path.isfile(vocabulary_path)):
        return []
    try:
        read_label_file(labels_path, LabelVocabulary.read(vocabulary_path), num_entries, single_label=False)
    except ValueError as error:
        return [str(error)]
    return []


def check_manifest(path: str, sample_rate: int, min_samples: int, jobs: int = 1) -> CheckReport:
    """Decode every clip of a manifest (in ``jobs`` processes); report every problem found, each naming file and line."""
    report = CheckReport()
    try:
        manifest = read_manifest(path, problems=report.problems)
    except (OSError, ValueError) as error:
        report.problems.append(str(error))
        return report
    report.problems.extend(_check_labels(path, len(manifest.files) + len(report.problems)))
    if not os.path.isdir(manifest.root):
        report.problems.append(f"{path}:1: the audio root folder {manifest.root} does not exist")
        return report
    work = [(manifest.audio_path(i), size, sample_rate, min_samples) for i, size in enumerate(manifest.sizes.tolist())]
    for index, (problems, notes) in enumerate(parallel_map(_check_clip, work, jobs, f"checking {os.path.basename(path)}")):
        report.problems.extend(f"{manifest.location(index)}: {p}" for p in problems)
        report.notes.extend(f"{manifest.location(index)}: note: {n}" for n in notes)
    # Malformed lines were found first; list the manifest's problems in line order, other files' after them.
    prefix = re.compile(rf"^{re.escape(path)}:(\d+): ")
    report.problems.sort(key=lambda p: int(prefix.match(p).group(1)) if prefix.match(p) else sys.maxsize)
    return report

"""fairseq audio manifests: reading, writing from a folder of audio, and checking every clip.

A manifest is a text file: the absolute audio root on the first line, then one
``relative/path<TAB>num_samples`` per clip, the length counted at the training
sample rate (files at other rates are resampled when read). ``logmel-manifest``
and ``logmel-prepare`` write them with :func:`probe_files` and
:func:`write_manifest`; training reads them with :func:`read_manifest`.
"""
import os
import random
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import torch
from tqdm import tqdm

from .audio import SIZE_TOLERANCE, AudioReadError, num_samples_at_rate, read_audio, too_short

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Manifest:
    """A fairseq audio manifest: a root folder, then one ``relative/path<TAB>num_samples`` per line.

    ``line_numbers`` holds the 1-based line of each entry when some lines were
    left out (see :func:`read_manifest`); otherwise entry ``i`` is on line ``i + 2``.
    """

    path: str
    root: str
    files: List[str]
    sizes: List[int]
    line_numbers: Optional[List[int]] = None

    def audio_path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    def line_number(self, index: int) -> int:
        """1-based line of entry ``index`` in the manifest file."""
        return self.line_numbers[index] if self.line_numbers is not None else index + 2

    def location(self, index: int) -> str:
        """``manifest.tsv:LINE``, for messages about entry ``index``."""
        return f"{self.path}:{self.line_number(index)}"


def read_manifest(path: str, problems: Optional[List[str]] = None) -> Manifest:
    """Parse a manifest, raising ``ValueError`` that names the file and line of any malformed entry.

    With a ``problems`` list, malformed entries are described there instead and
    left out, so that every problem of the file can be reported at once; a
    missing or malformed root line still raises, since no entry can be located
    without it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: manifest must start with the root folder of the audio files")
    root = lines[0].strip()
    if "\t" in root:
        raise ValueError(f"{path}:1: expected the root folder, got an entry {root!r}; is the root line missing?")
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
    with tqdm(total=len(jobs), desc=description, unit="file", disable=None, file=sys.stderr) as progress:
        if processes <= 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(function(job))
                progress.update()
            return results
        chunksize = max(1, min(64, len(jobs) // (4 * processes)))
        with ProcessPoolExecutor(processes, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            results = []
            for result in pool.map(function, jobs, chunksize=chunksize):
                results.append(result)
                progress.update()
            return results


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
    work = [(manifest.audio_path(i), size, sample_rate, min_samples) for i, size in enumerate(manifest.sizes)]
    for index, (problems, notes) in enumerate(parallel_map(_check_clip, work, jobs, f"checking {os.path.basename(path)}")):
        report.problems.extend(f"{manifest.location(index)}: {p}" for p in problems)
        report.notes.extend(f"{manifest.location(index)}: note: {n}" for n in notes)
    # Malformed lines were found first; list the manifest's problems in line order, other files' after them.
    prefix = re.compile(rf"^{re.escape(path)}:(\d+): ")
    report.problems.sort(key=lambda p: int(prefix.match(p).group(1)) if prefix.match(p) else sys.maxsize)
    return report

"""Writing manifest folders for the fine-tuning datasets: shared by every ``logmel-prepare`` dataset.

A manifest folder holds, for each split, ``<split>.tsv`` (absolute audio root,
then ``relative/path<TAB>num_samples`` at 16 kHz), ``<split>.labels`` (the
clip's labels, comma-separated, line-aligned with the manifest entries) and
``<split>_missing.txt`` (``key<TAB>reason`` for every clip of the official split
that is not in the manifest), plus ``labels.txt`` (the vocabulary, one label per
line, optionally ``label<TAB>display name``).
"""
import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..data.audio import too_short
from ..data.manifest import probe_files, write_manifest

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Clip:
    """One clip of an official split.

    ``relative`` is the audio path relative to the manifest root, or None when
    the audio could not be located, in which case ``problem`` says why.
    """

    key: str
    relative: Optional[str]
    labels: Tuple[str, ...]
    problem: Optional[str] = None


@dataclass
class ProbeResult:
    """Length at 16 kHz of every readable file, and the reason for every other one (keys: relative paths)."""

    sizes: Dict[str, int] = field(default_factory=dict)
    problems: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SplitSummary:
    """What :func:`write_split` wrote: clips in the manifest and clips reported missing."""

    split: str
    written: int
    missing: int
    report: str


def check_label_name(name: str, where: str) -> str:
    """Return ``name`` if it can be written to a ``.labels`` file, else raise ValueError naming ``where``.

    ``.labels`` lines separate labels with commas and labels.txt separates the
    display name with a TAB, so neither may occur in a label name; no official
    vocabulary of the six datasets has one, so a clash means a wrong file or column.
    """
    if not name or name != name.strip() or any(c in name for c in ",\t\n\r"):
        raise ValueError(
            f"{where}: label name {name!r} is empty, has surrounding spaces, or contains a comma, TAB or newline; "
            "such names cannot be written to .labels files (labels are comma-separated)"
        )
    return name


def read_csv_rows(path: str, delimiter: str = ",", comment: Optional[str] = None) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(line number, fields)`` of a CSV file, skipping blank lines and lines starting with ``comment``.

    Spaces after delimiters are skipped, so AudioSet's ``a, b, "c,d"`` rows parse as three fields.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"metadata file {path} does not exist")
    line_number = 0

    def kept_lines(f) -> Iterator[str]:
        nonlocal line_number
        for line_number, line in enumerate(f, start=1):
            if line.strip() and not (comment and line.lstrip().startswith(comment)):
                yield line

    with open(path, newline="", encoding="utf-8") as f:
        # No official metadata file has quoted newlines, so each row is the line just read.
        for row in csv.reader(kept_lines(f), delimiter=delimiter, skipinitialspace=True):
            yield line_number, row


def read_csv_dicts(path: str, required: Sequence[str], delimiter: str = ",") -> List[Tuple[int, Dict[str, str]]]:
    """Rows of a CSV file with a header line, as ``(line number, {column: value})``.

    Raises ValueError naming the file when a ``required`` column is absent or a row has the wrong number of fields.
    """
    rows = read_csv_rows(path, delimiter)
    try:
        _, header = next(rows)
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a header with columns {list(required)}") from None
    header = [name.strip() for name in header]
    absent = [name for name in required if name not in header]
    if absent:
        raise ValueError(f"{path}: columns {absent} missing from header {header}")
    records = []
    for number, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{path}:{number}: expected {len(header)} fields {header}, got {len(row)}: {row}")
        records.append((number, dict(zip(header, row))))
    return records


def split_labels(text: str, where: str) -> Tuple[str, ...]:
    """``"a,b"`` -> ``("a", "b")``, each name checked with :func:`check_label_name`."""
    return tuple(check_label_name(name.strip(), where) for name in text.split(",") if name.strip())


def probe(root: str, clips: Sequence[Clip], jobs: int, min_samples: int) -> ProbeResult:
    """Read the header of every located clip once (in ``jobs`` processes); too-short clips count as problems."""
    unique = sorted({clip.relative for clip in clips if clip.relative is not None})
    readable, errors = probe_files(root, unique, SAMPLE_RATE, jobs)
    result = ProbeResult()
    for relative, num_samples in readable:
        short = too_short(num_samples, min_samples, SAMPLE_RATE)
        if short:
            result.problems[relative] = short
        else:
            result.sizes[relative] = num_samples
    # probe_files keeps the order of its input, so the unreadable files line up with its error messages.
    unreadable = [relative for relative in unique if relative not in result.sizes and relative not in result.problems]
    if len(unreadable) != len(errors):
        raise RuntimeError(f"probe returned {len(errors)} errors for {len(unreadable)} unreadable files")
    for relative, error in zip(unreadable, errors):
        result.problems[relative] = f"unreadable: {error}"
    return result


def write_vocabulary(folder: str, names: Sequence[str], display_names: Optional[Mapping[str, str]] = None) -> None:
    """Write ``labels.txt``: one label per line in class order, with ``<TAB>display name`` when given."""
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"vocabulary for {folder} has duplicate labels {duplicates}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        for name in names:
            check_label_name(name, os.path.join(folder, "labels.txt"))
            if display_names is None:
                print(name, file=f)
            else:
                display = display_names[name]
                if "\t" in display or "\n" in display:
                    raise ValueError(f"display name {display!r} of {name!r} contains a TAB or newline")
                print(f"{name}\t{display}", file=f)


def write_split(
    folder: str,
    split: str,
    root: str,
    clips: Sequence[Clip],
    probed: ProbeResult,
    vocabulary: Sequence[str],
    multi_label: bool,
) -> SplitSummary:
    """Write ``<split>.tsv``, ``<split>.labels`` and ``<split>_missing.txt`` for ``clips`` in their given order.

    Clips that were not located, or whose audio is unreadable or too short, go
    to the missing report instead of the manifest. Raises ValueError for a label
    outside ``vocabulary``, or (single-label) for a clip without exactly one label.
    """
    known = set(vocabulary)
    for clip in clips:
        unknown = [label for label in clip.labels if label not in known]
        if unknown:
            raise ValueError(f"{split} clip {clip.key}: labels {unknown} are not in the vocabulary of {folder}")
        if not multi_label and len(clip.labels) != 1:
            raise ValueError(f"{split} clip {clip.key}: single-label dataset, got labels {list(clip.labels)}")
    entries, label_lines, report_lines = [], [], []
    for clip in clips:
        problem = (clip.problem or "not located") if clip.relative is None else probed.problems.get(clip.relative)
        if problem is None:
            entries.append((clip.relative, probed.sizes[clip.relative]))
            label_lines.append(",".join(clip.labels) + "\n")
        else:
            report_lines.append(f"{clip.key}\t{problem}\n")
    os.makedirs(folder, exist_ok=True)
    write_manifest(os.path.join(folder, f"{split}.tsv"), root, entries)
    with open(os.path.join(folder, f"{split}.labels"), "w") as f:
        f.writelines(label_lines)
    report = os.path.join(folder, f"{split}_missing.txt")
    with open(report, "w") as f:
        f.writelines(report_lines)
    summary = SplitSummary(split=split, written=len(entries), missing=len(report_lines), report=report)
    print(f"{folder}: {split}: {summary.written} clips written, {summary.missing} missing or unreadable (listed in {summary.report})")
    return summary


def write_folder(
    folder: str,
    root: str,
    splits: Mapping[str, Sequence[Clip]],
    probed: ProbeResult,
    vocabulary: Sequence[str],
    multi_label: bool,
    display_names: Optional[Mapping[str, str]] = None,
) -> List[SplitSummary]:
    """Write ``labels.txt`` and every split of one manifest folder; print a line per split."""
    write_vocabulary(folder, vocabulary, display_names)
    return [write_split(folder, split, root, clips, probed, vocabulary, multi_label) for split, clips in splits.items()]


def audio_root(path: str) -> str:
    """Absolute, symlink-resolved audio root for the manifest's first line; the folder must exist."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"audio folder {path} does not exist")
    return os.path.realpath(path)


def locate(root: str, relative: str, key: str, labels: Tuple[str, ...]) -> Clip:
    """A :class:`Clip` for ``root/relative``, or one marked "not found" when that file does not exist."""
    if os.path.isfile(os.path.join(root, relative)):
        return Clip(key=key, relative=relative, labels=labels)
    return Clip(key=key, relative=None, labels=labels, problem=f"not found: {os.path.join(root, relative)}")

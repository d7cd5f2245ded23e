"""AudioSet: multi-label tagging with 527 classes, balanced and full training sets.

Input: the segment lists ``balanced_train_segments.csv``,
``unbalanced_train_segments.csv`` and ``eval_segments.csv`` (``#`` comment
lines, then ``YTID, start_seconds, end_seconds, "mid,mid,..."``),
``class_labels_indices.csv`` (``index,mid,display_name``) and a folder of
downloaded audio. AudioSet ships no audio, so downloaders name files in
different ways: ``--filename-pattern`` describes the path of a clip relative to
``--audio-dir`` with the placeholders ``{ytid}`` (required), ``{start}`` and
``{end}`` (seconds, any number of decimals: ``30``, ``30.0`` and ``30.000``
all match 30 s), the wildcards ``*`` and ``?`` (within one path component)
and a leading or inner ``**/`` (any number of folders). Examples:

- ``**/{ytid}_{start}.wav`` (default): ``--PJHxphWEs_30.000.wav`` in any subfolder;
- ``**/Y{ytid}.wav``: the PANNs download script (``balanced_train_segments/Y--PJHxphWEs.wav``);
- ``{ytid}_{start}_{end}.flac`` or ``**/{ytid}_{start}.*`` (any extension).

The audio folder is listed once; a clip matched by no file, or by several, is
reported missing (with the candidates).

Output: ``OUT/audioset_balanced`` (train = balanced_train) and
``OUT/audioset_full`` (train = balanced_train + unbalanced_train), both with
valid = eval. ``labels.txt`` lines are ``MID<TAB>display name`` in
``class_labels_indices.csv`` order; ``.labels`` lines hold MIDs.
"""
import argparse
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

from .common import Clip, audio_root, check_label_name, probe, read_csv_dicts, read_csv_rows, split_labels, write_folder

SEGMENT_FILES = {
    "balanced": "balanced_train_segments.csv",
    "unbalanced": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}
SUBSETS = {"balanced": ("balanced",), "full": ("balanced", "unbalanced")}
DEFAULT_PATTERN = "**/{ytid}_{start}.wav"
_TOKENS = re.compile(r"\{ytid\}|\{start\}|\{end\}|\*\*/|\*|\?|\{[^}]*\}")
_GROUPS = {
    "{ytid}": r"(?P<ytid>[A-Za-z0-9_-]{11})",
    "{start}": r"(?P<start>\d+(?:\.\d+)?)",
    "{end}": r"(?P<end>\d+(?:\.\d+)?)",
    "**/": r"(?:[^/]+/)*",
    "*": r"[^/]*",
    "?": r"[^/]",
}


@dataclass(frozen=True)
class Segment:
    """One row of a segment list."""

    ytid: str
    start: float
    end: float
    labels: Tuple[str, ...]


def pattern_to_regex(pattern: str) -> "re.Pattern[str]":
    """Compile a ``--filename-pattern`` into a regex matched against whole '/'-separated relative paths."""
    parts, position = [], 0
    for token in _TOKENS.finditer(pattern):
        parts.append(re.escape(pattern[position : token.start()]))
        if token.group() not in _GROUPS:
            raise ValueError(f"filename pattern {pattern!r}: unknown placeholder {token.group()}; use {{ytid}}, {{start}}, {{end}}")
        parts.append(_GROUPS[token.group()])
        position = token.end()
    parts.append(re.escape(pattern[position:]))
    if "{ytid}" not in pattern:
        raise ValueError(f"filename pattern {pattern!r} must contain {{ytid}}")
    try:
        return re.compile("".join(parts))
    except re.error as error:
        raise ValueError(f"filename pattern {pattern!r}: a placeholder appears twice ({error})") from None


def index_audio(root: str, pattern: str, wanted: Set[str]) -> Dict[str, List[Tuple[str, Optional[float], Optional[float]]]]:
    """{ytid: [(relative path, start or None, end or None)]} of the files under ``root`` matching ``pattern``."""
    regex = pattern_to_regex(pattern)
    index: Dict[str, List[Tuple[str, Optional[float], Optional[float]]]] = {}
    for folder, _, names in os.walk(root, followlinks=True):
        prefix = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if prefix == "." else prefix + "/"
        for name in names:
            match = regex.fullmatch(prefix + name)
            if match and match.group("ytid") in wanted:
                times = match.groupdict()
                start, end = (float(times[key]) if times.get(key) else None for key in ("start", "end"))
                index.setdefault(match.group("ytid"), []).append((prefix + name, start, end))
    return index


def read_segments(path: str, vocabulary: Set[str]) -> List[Segment]:
    """Rows of a segment list; every MID must be in ``vocabulary``."""
    segments = []
    for number, row in read_csv_rows(path, comment="#"):
        where = f"{path}:{number}"
        if len(row) != 4:
            raise ValueError(f"{where}: expected 'YTID, start_seconds, end_seconds, \"labels\"', got {row}")
        try:
            start, end = float(row[1]), float(row[2])
        except ValueError:
            raise ValueError(f"{where}: start and end must be numbers, got {row[1]!r}, {row[2]!r}") from None
        labels = split_labels(row[3], where)
        unknown = [label for label in labels if label not in vocabulary]
        if unknown or not labels:
            raise ValueError(f"{where}: labels {list(labels)} empty or not in class_labels_indices.csv: {unknown}")
        segments.append(Segment(row[0].strip(), start, end, labels))
    return segments


def read_classes(path: str) -> Tuple[List[str], Dict[str, str]]:
    """``class_labels_indices.csv`` -> (MIDs in index order, {MID: display name})."""
    rows = []
    for number, record in read_csv_dicts(path, ("index", "mid", "display_name")):
        rows.append((int(record["index"]), check_label_name(record["mid"].strip(), f"{path}:{number}"), record["display_name"].strip()))
    indices = sorted(index for index, _, _ in rows)
    if indices != list(range(len(rows))):
        raise ValueError(f"{path}: indices must be 0 ... {len(rows) - 1} once each")
    rows.sort()
    return [mid for _, mid, _ in rows], {mid: display for _, mid, display in rows}


def locate_segments(segments: Iterable[Segment], index: Dict[str, list], pattern: str) -> List[Clip]:
    """Pick the one indexed file of each segment whose captured times (if any) equal the segment's."""
    clips = []
    for segment in segments:
        candidates = [
            relative
            for relative, start, end in index.get(segment.ytid, [])
            if (start is None or abs(start - segment.start) < 1e-3) and (end is None or abs(end - segment.end) < 1e-3)
        ]
        key = f"{segment.ytid}_{segment.start:.3f}"
        if len(candidates) == 1:
            clips.append(Clip(key, candidates[0], segment.labels))
        elif candidates:
            clips.append(Clip(key, None, segment.labels, f"ambiguous: {len(candidates)} files match {pattern!r}: {candidates}"))
        else:
            clips.append(Clip(key, None, segment.labels, f"not found: no file matches {pattern!r}"))
    return clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="folder holding the segment CSVs and class_labels_indices.csv")
    parser.add_argument("--audio-dir", required=True, help="root folder of the downloaded clips (the manifest root)")
    parser.add_argument("--filename-pattern", default=DEFAULT_PATTERN, help="path of a clip under --audio-dir (default: %(default)s)")
    parser.add_argument(
        "--subsets", nargs="+", choices=sorted(SUBSETS), default=sorted(SUBSETS), help="manifest folders to write (default: both)"
    )


def prepare(args: argparse.Namespace) -> None:
    """Write OUT/audioset_balanced and/or OUT/audioset_full."""
    pattern_to_regex(args.filename_pattern)
    root = audio_root(args.audio_dir)
    vocabulary, display_names = read_classes(os.path.join(args.dataset_dir, "class_labels_indices.csv"))
    needed: Sequence[str] = sorted({"eval", *(part for subset in args.subsets for part in SUBSETS[subset])})
    segments = {part: read_segments(os.path.join(args.dataset_dir, SEGMENT_FILES[part]), set(vocabulary)) for part in needed}
    wanted = {segment.ytid for part in segments.values() for segment in part}
    index = index_audio(root, args.filename_pattern, wanted)
    clips = {part: locate_segments(segments[part], index, args.filename_pattern) for part in needed}
    probed = probe(root, [clip for part in clips.values() for clip in part], args.jobs, args.min_samples)
    for subset in args.subsets:
        splits = {"train": [clip for part in SUBSETS[subset] for clip in clips[part]], "valid": clips["eval"]}
        write_folder(os.path.join(args.out, f"audioset_{subset}"), root, splits, probed, vocabulary, True, display_names)

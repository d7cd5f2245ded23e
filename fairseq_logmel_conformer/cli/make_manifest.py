"""Build fairseq manifests from a folder of audio, or check existing manifests.

    logmel-manifest AUDIO_DIR --dest MANIFEST_DIR [--valid-percent 0.01]
    logmel-manifest --check MANIFEST_DIR/train.tsv [MANIFEST_DIR/valid.tsv ...]

Building writes ``train.tsv`` and ``valid.tsv``: the absolute audio root on the
first line, then ``relative/path<TAB>num_samples`` with the length counted at
``--sample-rate`` (files at other rates are resampled when read). Files that
cannot be opened (missing, empty, not audio, a WAV cut short) and clips
shorter than ``--min-samples`` are left out and listed in ``unreadable.txt``.

Checking decodes every clip, as training would, and reports every problem at
once, each as ``MANIFEST:LINE: ...``: malformed lines, a missing root folder,
unreadable or corrupt files, NaN/Inf samples, clips shorter than
``--min-samples``, sample counts that disagree with the file, and (when
``<split>.labels`` and ``labels.txt`` sit next to the manifest) a label file
with unknown labels or the wrong number of lines. Silent clips are listed as
notes: they train (the log-mel floor keeps their features finite) but are
worth knowing about. The exit status is 1 if there was any problem.
"""
import argparse
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch

from ..data.audio import AUDIO_EXTENSIONS, SIZE_TOLERANCE, AudioReadError, num_samples_at_rate, read_audio, read_manifest

# One 80 ms latent step of the model at 16 kHz: shorter clips give no encoder output.
DEFAULT_MIN_SAMPLES = 1280


def find_audio(root: str, extensions: List[str]) -> List[str]:
    suffixes = tuple("." + ext.lower().lstrip(".") for ext in extensions)
    found = []
    for folder, _, names in os.walk(root, followlinks=True):
        found.extend(os.path.relpath(os.path.join(folder, n), root) for n in names if n.lower().endswith(suffixes))
    return sorted(found)


def _probe(job: Tuple[str, str, int]) -> Tuple[str, Optional[int], Optional[str]]:
    root, relative, sample_rate = job
    try:
        return relative, num_samples_at_rate(os.path.join(root, relative), sample_rate), None
    except AudioReadError as error:
        return relative, None, str(error)


def _map(function, jobs: List, processes: int) -> Iterable:
    """``map`` in ``processes`` worker processes (one torch thread each), keeping the order of ``jobs``."""
    if processes <= 1 or len(jobs) <= 1:
        return map(function, jobs)
    pool = ProcessPoolExecutor(processes, initializer=torch.set_num_threads, initargs=(1,))
    with pool:
        return list(pool.map(function, jobs, chunksize=max(1, min(64, len(jobs) // (4 * processes)))))


def probe_files(root: str, files: List[str], sample_rate: int, jobs: int):
    """Return ([(relative path, num samples)], [error messages]) in the order of ``files``."""
    results = list(_map(_probe, [(root, f, sample_rate) for f in files], jobs))
    readable = [(f, n) for f, n, err in results if err is None]
    errors = [err for _, _, err in results if err is not None]
    return readable, errors


def write_manifest(path: str, root: str, entries: List[Tuple[str, int]]) -> None:
    with open(path, "w") as f:
        print(root, file=f)
        for relative, num_samples in entries:
            print(f"{relative}\t{num_samples}", file=f)


def build(args) -> int:
    root = os.path.realpath(args.audio_dir)
    if not os.path.isdir(root):
        raise SystemExit(f"error: audio folder {args.audio_dir} does not exist")
    files = find_audio(root, args.ext.split(","))
    if not files:
        raise SystemExit(f"error: no files ending in {args.ext} under {root}")
    readable, errors = probe_files(root, files, args.sample_rate, args.jobs)
    too_short = [(f, n) for f, n in readable if n < args.min_samples]
    readable = [(f, n) for f, n in readable if n >= args.min_samples]
    rng = random.Random(args.seed)
    valid = set(rng.sample(range(len(readable)), round(len(readable) * args.valid_percent)))
    os.makedirs(args.dest, exist_ok=True)
    write_manifest(os.path.join(args.dest, "train.tsv"), root, [e for i, e in enumerate(readable) if i not in valid])
    write_manifest(os.path.join(args.dest, "valid.tsv"), root, [e for i, e in enumerate(readable) if i in valid])
    problems = errors + [f"{os.path.join(root, f)}: only {n} samples, fewer than --min-samples {args.min_samples}" for f, n in too_short]
    with open(os.path.join(args.dest, "unreadable.txt"), "w") as f:
        f.writelines(p + "\n" for p in problems)
    print(
        f"{len(readable) - len(valid)} train and {len(valid)} valid clips written to {args.dest}; "
        f"{len(errors)} unreadable, {len(too_short)} too short (listed in {args.dest}/unreadable.txt)"
    )
    for problem in problems[:20]:
        print("  " + problem, file=sys.stderr)
    return 0


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
    if samples.numel() < min_samples:
        problems.append(f"{path}: {samples.numel()} samples at {sample_rate} Hz, fewer than --min-samples {min_samples}")
    if abs(samples.numel() - expected) > SIZE_TOLERANCE:
        problems.append(f"{path}: the manifest says {expected} samples, the file has {samples.numel()} at {sample_rate} Hz")
    if not samples.any():
        notes.append(f"{path}: digital silence (every sample is zero)")
    return problems, notes


def _check_labels(manifest_path: str, num_entries: int) -> List[str]:
    """The first problem of ``<split>.labels`` against ``labels.txt`` next to the manifest, if both exist."""
    from ..data.labels import LabelVocabulary, read_label_file

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
    for index, (problems, notes) in enumerate(_map(_check_clip, work, jobs)):
        report.problems.extend(f"{manifest.location(index)}: {p}" for p in problems)
        report.notes.extend(f"{manifest.location(index)}: note: {n}" for n in notes)
    # Malformed lines were found first; list the manifest's problems in line order, other files' after them.
    prefix = re.compile(rf"^{re.escape(path)}:(\d+): ")
    report.problems.sort(key=lambda p: int(prefix.match(p).group(1)) if prefix.match(p) else sys.maxsize)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", nargs="?", help="folder searched recursively for audio")
    parser.add_argument("--dest", help="folder for train.tsv, valid.tsv and unreadable.txt")
    parser.add_argument("--check", nargs="+", metavar="MANIFEST", help="decode every clip of each MANIFEST and report all problems")
    parser.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS), help="comma-separated extensions (default: %(default)s)")
    parser.add_argument("--valid-percent", type=float, default=0.01, help="fraction of clips for valid.tsv")
    parser.add_argument("--seed", type=int, default=1, help="seed of the train/valid split")
    parser.add_argument("--sample-rate", type=int, default=16000, help="lengths are counted at this rate")
    parser.add_argument(
        "--min-samples", type=int, default=DEFAULT_MIN_SAMPLES, help="shorter clips are reported and left out (default: one 80 ms step at 16 kHz)"
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    if args.check:
        failed = False
        for manifest in args.check:
            report = check_manifest(manifest, args.sample_rate, args.min_samples, args.jobs)
            for line in report.problems + report.notes:
                print(line)
            print(f"{len(report.problems)} problem(s), {len(report.notes)} note(s) in {manifest}")
            failed = failed or bool(report.problems)
        return 1 if failed else 0
    if not args.audio_dir or not args.dest:
        parser.error("give AUDIO_DIR and --dest, or --check MANIFEST")
    return build(args)


if __name__ == "__main__":
    sys.exit(main())

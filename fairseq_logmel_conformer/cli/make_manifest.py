"""Build fairseq manifests from a folder of audio, or check an existing manifest.

    logmel-manifest AUDIO_DIR --dest MANIFEST_DIR [--valid-percent 0.01]
    logmel-manifest --check MANIFEST_DIR/train.tsv

Writes ``train.tsv`` and ``valid.tsv``: the absolute audio root on the first
line, then ``relative/path<TAB>num_samples`` with the length counted at
``--sample-rate`` (files at other rates are resampled when read). Files that
soundfile cannot open are listed in ``unreadable.txt`` and left out.
"""
import argparse
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Tuple

import torch

from ..data.audio import AUDIO_EXTENSIONS, AudioReadError, num_samples_at_rate, read_audio, read_manifest


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


def probe_files(root: str, files: List[str], sample_rate: int, jobs: int):
    """Return ([(relative path, num samples)], [error messages]) in the order of ``files``."""
    work = [(root, f, sample_rate) for f in files]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_probe, work, chunksize=64))
    else:
        results = [_probe(w) for w in work]
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


def check_manifest(path: str, sample_rate: int, min_samples: int) -> List[str]:
    """Decode every clip of a manifest; return every problem found, each naming the file and line."""
    manifest = read_manifest(path)
    problems = []
    for index, (relative, expected) in enumerate(zip(manifest.files, manifest.sizes)):
        where = f"{path}:{index + 2}: {manifest.audio_path(index)}"
        try:
            samples = read_audio(manifest.audio_path(index), sample_rate)
        except AudioReadError as error:
            problems.append(f"{where}: {error.__cause__ or error}")
            continue
        if samples.numel() < min_samples:
            problems.append(f"{where}: {samples.numel()} samples, fewer than {min_samples}")
        if not torch.isfinite(samples).all():
            problems.append(f"{where}: contains NaN or Inf samples")
        # Resampling may round differently from the header count by a sample or two.
        if abs(samples.numel() - expected) > 2:
            problems.append(f"{where}: manifest says {expected} samples, file has {samples.numel()} at {sample_rate} Hz")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", nargs="?", help="folder searched recursively for audio")
    parser.add_argument("--dest", help="folder for train.tsv, valid.tsv and unreadable.txt")
    parser.add_argument("--check", metavar="MANIFEST", help="decode every clip of MANIFEST and report all problems")
    parser.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS), help="comma-separated extensions (default: %(default)s)")
    parser.add_argument("--valid-percent", type=float, default=0.01, help="fraction of clips for valid.tsv")
    parser.add_argument("--seed", type=int, default=1, help="seed of the train/valid split")
    parser.add_argument("--sample-rate", type=int, default=16000, help="lengths are counted at this rate")
    parser.add_argument("--min-samples", type=int, default=960, help="shorter clips are reported and left out (960: one 80 ms step)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = parser.parse_args(argv)
    if args.check:
        problems = check_manifest(args.check, args.sample_rate, args.min_samples)
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {args.check}")
        return 1 if problems else 0
    if not args.audio_dir or not args.dest:
        parser.error("give AUDIO_DIR and --dest, or --check MANIFEST")
    return build(args)


if __name__ == "__main__":
    sys.exit(main())

"""Build fairseq manifests from a folder of audio, or check existing manifests.

    logmel-manifest AUDIO_DIR --dest MANIFEST_DIR [--valid-percent 0.01]
    logmel-manifest --check MANIFEST_DIR/train.tsv [MANIFEST_DIR/valid.tsv ...]

Building writes ``train.tsv`` and ``valid.tsv``: the absolute audio root on the
first line, then ``relative/path<TAB>num_samples`` with the length counted at
``--sample-rate`` (files at other rates are resampled when read). Files that
cannot be opened (missing, empty, not audio, a WAV cut short) and clips
shorter than ``--min-samples`` are left out and listed in ``unreadable.txt``.
A destination that already holds a different train/valid split is left alone
unless ``--overwrite`` is given.

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
import sys
from typing import List, Optional

from ..data.audio import AUDIO_EXTENSIONS, min_clip_samples
from ..data.manifest import SplitExistsError, build_manifests, check_manifest
from .common import add_jobs_argument, add_min_samples_argument


def check(args: argparse.Namespace) -> int:
    failed = False
    for manifest in args.check:
        report = check_manifest(manifest, args.sample_rate, args.min_samples, args.jobs)
        for line in report.problems + report.notes:
            print(line)
        print(f"{len(report.problems)} problem(s), {len(report.notes)} note(s) in {manifest}")
        failed = failed or bool(report.problems)
    return 1 if failed else 0


def build(args: argparse.Namespace) -> int:
    try:
        report = build_manifests(
            args.audio_dir, args.dest, args.valid_percent, args.seed, args.sample_rate, args.min_samples,
            args.ext.split(","), args.jobs, overwrite=args.overwrite,
        )
    except (FileNotFoundError, SplitExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"{report.train} train and {report.valid} valid clips written to {args.dest}; {report.unreadable} unreadable, "
        f"{report.short} too short (listed in {args.dest}/unreadable.txt); read {report.files} headers in "
        f"{report.seconds:.1f} s ({report.files / max(report.seconds, 1e-9):.0f} files/s, {args.jobs} processes)"
    )
    for problem in report.problems[:20]:
        print("  " + problem, file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-manifest", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audio_dir", nargs="?", help="folder searched recursively for audio")
    parser.add_argument("--dest", "--out", dest="dest", help="folder for train.tsv, valid.tsv and unreadable.txt")
    parser.add_argument("--check", nargs="+", metavar="MANIFEST", help="decode every clip of each MANIFEST and report all problems")
    parser.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS), help="comma-separated extensions (default: %(default)s)")
    parser.add_argument("--valid-percent", type=float, default=0.01, help="fraction of clips for valid.tsv (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the train/valid split (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a different train/valid split already in --dest")
    parser.add_argument("--sample-rate", type=int, default=16000, help="lengths are counted at this rate (default: %(default)s)")
    add_min_samples_argument(parser)
    add_jobs_argument(parser)
    args = parser.parse_args(argv)
    if args.min_samples is None:
        args.min_samples = min_clip_samples(args.sample_rate)
    if args.check:
        return check(args)
    if not args.audio_dir or not args.dest:
        parser.error("give AUDIO_DIR and --dest, or --check MANIFEST")
    return build(args)


if __name__ == "__main__":
    sys.exit(main())

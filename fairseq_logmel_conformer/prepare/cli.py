"""``logmel-prepare DATASET DATASET_DIR --out OUT [options]``: manifest folders for the fine-tuning datasets.

Each dataset reads its official metadata as released, locates the audio,
reads every clip's header (in parallel) for its length at 16 kHz and writes
``<split>.tsv``, ``<split>.labels``, ``<split>_missing.txt`` and ``labels.txt``.
Clips that are missing, unreadable or shorter than ``--min-samples`` are
listed in ``<split>_missing.txt`` with the reason and counted on stdout.
Run ``logmel-prepare DATASET --help`` for a dataset's own options.
"""
import argparse
import sys
from typing import List, Optional

from ..cli.common import add_jobs_argument, add_min_samples_argument
from ..data.audio import min_clip_samples
from . import audioset, dcase2019_1a, esc50, fsdkaggle2019, kinetics700, magnatagatune

DATASETS = {
    "audioset": audioset,
    "esc50": esc50,
    "fsdkaggle2019": fsdkaggle2019,
    "dcase2019_1a": dcase2019_1a,
    "magnatagatune": magnatagatune,
    "kinetics700": kinetics700,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logmel-prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET", help=", ".join(DATASETS))
    for name, module in DATASETS.items():
        sub = subparsers.add_parser(
            name, description=module.__doc__, help=module.__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)
        sub.add_argument("--out", required=True, help="output folder for the manifest folder(s)")
        add_jobs_argument(sub)
        add_min_samples_argument(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.min_samples is None:
        args.min_samples = min_clip_samples(16000)
    try:
        DATASETS[args.dataset].prepare(args)
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"logmel-prepare {args.dataset}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

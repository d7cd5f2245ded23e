"""What the console scripts share: one vocabulary of flags, model loading, audio inputs and failure reports.

Flags keep fairseq's names where fairseq has one (``--user-dir``, ``--cpu``,
``--batch-size``, ``logmel-manifest``'s ``--dest``); output folders are
``--out`` everywhere else. Old spellings stay accepted.
"""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import List, Sequence

import torch

from ..checkpoint import CheckpointError
from ..data.audio import AUDIO_EXTENSIONS
from ..data.manifest import default_jobs, find_audio, read_manifest


def add_jobs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="parallel processes (default: the CPUs available, %(default)s)")


def add_min_samples_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-samples", type=int, default=None,
        help="shorter clips are reported and left out (default: the 60 ms that give one model step, 960 at 16 kHz)",
    )


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="torch device, e.g. cuda, cuda:1 or cpu (default: cuda when there is a GPU, else cpu)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even when there is a GPU (fairseq's flag)")


def device(args: argparse.Namespace) -> torch.device:
    """The device the flags of :func:`add_device_arguments` ask for."""
    if args.cpu:
        return torch.device("cpu")
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def add_checkpoint_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("checkpoint", help=what)
    parser.add_argument("--user-dir", help="the fairseq plugin folder of a checkpoint trained with your own task or model (fairseq's flag)")


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    """Windowing of long audio (``AudioModel``), shared by ``logmel-embed`` and ``logmel-tag``."""
    parser.add_argument("--window-seconds", type=float, default=10.0, help="audio is processed in windows of this length (default: %(default)s)")
    parser.add_argument("--overlap-seconds", type=float, default=2.0, help="overlap of consecutive windows (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: %(default)s)")


def load_audio_model(args: argparse.Namespace):
    """The ``AudioModel`` the checkpoint, device and window flags ask for; exits with one line naming a bad checkpoint."""
    from ..inference import AudioModel

    try:
        return AudioModel.from_checkpoint(
            args.checkpoint, device=device(args), user_dir=args.user_dir,
            window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds, batch_size=args.batch_size,
        )
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None


@dataclass(frozen=True)
class AudioFile:
    """An input file: its ``path``, and ``name``, its path relative to the folder or manifest it came from
    (its file name when given alone), which names what is written for it."""

    path: str
    name: str


def expand_inputs(inputs: Sequence[str], extensions: Sequence[str] = AUDIO_EXTENSIONS) -> List[AudioFile]:
    """Audio files as given, folders replaced by the audio under them, manifests (.tsv) by their entries."""
    files = []
    for source in inputs:
        if os.path.isdir(source):
            files.extend(AudioFile(os.path.join(source, f), f) for f in find_audio(source, extensions))
        elif source.endswith(".tsv"):
            manifest = read_manifest(source)
            files.extend(AudioFile(manifest.audio_path(i), f) for i, f in enumerate(manifest.files))
        elif os.path.exists(source):
            files.append(AudioFile(source, os.path.basename(source)))
        else:
            raise SystemExit(f"error: {source} does not exist")
    return files


def report_unreadable(failures: List[str], heading: str) -> int:
    """Print ``heading`` and one indented line per unreadable file on stderr; -> exit status, 1 if there were any."""
    if failures:
        print(heading, file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
    return 1 if failures else 0

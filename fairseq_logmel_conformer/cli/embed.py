"""Write the embeddings of audio files, folders or manifests to .npy files.

    logmel-embed CHECKPOINT AUDIO [AUDIO ...] --out EMBEDDINGS [--clip-only]

AUDIO may be audio files, folders (searched recursively) or fairseq manifests
(.tsv). Each input gives ``EMBEDDINGS/<name>.npy``, where the name is its path
relative to its folder or to its manifest's root (a file given alone: its file
name), less the extension: the frame embeddings (T', D) float32, or with
``--clip-only`` the clip embedding (D,). Step ``t`` is centred at
``first_timestamp + t * step_seconds`` seconds, both written to
``EMBEDDINGS/embedding_info.json`` with the model's settings.

Resumable: inputs whose .npy already exists are skipped (each file is written
under a temporary name and renamed when complete, so an interrupted run leaves
no partial .npy). Files that cannot be decoded, or are shorter than one 80 ms
step, are listed at the end and in ``EMBEDDINGS/unreadable.txt``; the exit
status is then 1 (the other files are still written), otherwise 0.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from ..data.audio import AUDIO_EXTENSIONS, AudioReadError
from ..inference import AudioModel
from .common import add_checkpoint_arguments, add_device_arguments, add_window_arguments, expand_inputs, load_audio_model, report_unreadable


def output_paths(out_dir: str, files: List[str]) -> List[str]:
    """``out_dir/relative/name.npy`` for each input; two inputs that differ only by extension are an error."""
    outputs = [os.path.join(out_dir, os.path.splitext(f)[0] + ".npy") for f in files]
    seen = {}
    for relative, output in zip(files, outputs):
        if output in seen:
            raise SystemExit(f"error: {seen[output]} and {relative} would both be written to {output}")
        seen[output] = relative
    return outputs


def save_atomic(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "wb") as f:
        np.save(f, array)
    os.replace(partial, path)


def write_info(out_dir: str, model: AudioModel, args: argparse.Namespace) -> None:
    geometry = model.geometry
    info = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "content": "clip embedding (D,)" if args.clip_only else "frame embeddings (T', D)",
        "embedding_dim": model.embedding_dim,
        "sample_rate": model.sample_rate,
        "first_timestamp": geometry.first_timestamp,
        "step_seconds": geometry.step_seconds,
        "window_seconds": model.window_steps * geometry.step_seconds,
        "overlap_seconds": (model.window_steps - model.hop_steps) * geometry.step_seconds,
    }
    with open(os.path.join(out_dir, "embedding_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, "a logmel_conformer or logmel_conformer_classifier checkpoint (.pt)")
    parser.add_argument("audio", nargs="+", help="audio files, folders searched recursively, or fairseq manifests (.tsv)")
    parser.add_argument("--out", "--out-dir", dest="out", required=True, help="folder for the .npy files")
    parser.add_argument("--clip-only", action="store_true", help="write the clip embedding (D,) instead of the frame embeddings (T', D)")
    parser.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS), help="extensions searched in a folder (default: %(default)s)")
    add_device_arguments(parser)
    add_window_arguments(parser)
    args = parser.parse_args(argv)

    inputs = expand_inputs(args.audio, args.ext.split(","))
    outputs = output_paths(args.out, [audio.name for audio in inputs])
    todo = [(audio, output) for audio, output in zip(inputs, outputs) if not os.path.exists(output)]
    print(f"{len(inputs)} audio files, {len(inputs) - len(todo)} already done in {args.out}", file=sys.stderr)
    model = load_audio_model(args)
    os.makedirs(args.out, exist_ok=True)
    write_info(args.out, model, args)
    failures = []
    for audio, output in tqdm(todo, desc="embedding", unit="file", disable=None):
        try:
            result = model.embed(audio.path)
        except (AudioReadError, ValueError) as error:
            failures.append(f"{audio.path}: {error}")
            continue
        save_atomic(output, result.clip_embedding if args.clip_only else result.frame_embeddings)
    with open(os.path.join(args.out, "unreadable.txt"), "w") as f:
        f.writelines(line + "\n" for line in failures)
    print(
        f"{len(todo) - len(failures)} written, {len(inputs) - len(todo)} skipped (already done), {len(failures)} unreadable",
        file=sys.stderr,
    )
    return report_unreadable(failures, f"unreadable files (also in {os.path.join(args.out, 'unreadable.txt')}):")


if __name__ == "__main__":
    sys.exit(main())

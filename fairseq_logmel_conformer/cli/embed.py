"""Write the embeddings of a folder or manifest of audio to .npy files.

    logmel-embed CHECKPOINT AUDIO_DIR_OR_MANIFEST.tsv --out-dir EMBEDDINGS [--clip-only]

Each input ``relative/name.ext`` (relative to the folder, or to the manifest's
root) gives ``EMBEDDINGS/relative/name.npy``: the frame embeddings (T', D)
float32, or with ``--clip-only`` the clip embedding (D,). Step ``t`` is centred
at ``first_timestamp + t * step_seconds`` seconds, both written to
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
from typing import List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from ..data.audio import AUDIO_EXTENSIONS, AudioReadError, read_manifest
from ..inference import AudioModel
from .make_manifest import find_audio


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint and windowing options shared by ``logmel-embed`` and ``logmel-tag``."""
    parser.add_argument("checkpoint", help="a logmel_conformer or logmel_conformer_classifier checkpoint (.pt)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    parser.add_argument("--window-seconds", type=float, default=10.0, help="audio is processed in windows of this length (default: %(default)s)")
    parser.add_argument("--overlap-seconds", type=float, default=2.0, help="overlap of consecutive windows (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default: %(default)s)")


def load_model(args: argparse.Namespace) -> AudioModel:
    return AudioModel.from_checkpoint(
        args.checkpoint,
        device=args.device,
        window_seconds=args.window_seconds,
        overlap_seconds=args.overlap_seconds,
        batch_size=args.batch_size,
    )


def list_inputs(source: str, extensions: List[str]) -> Tuple[str, List[str]]:
    """(root folder, paths relative to it) of a folder searched recursively or of a .tsv manifest."""
    if os.path.isdir(source):
        return os.path.realpath(source), find_audio(source, extensions)
    if os.path.isfile(source):
        manifest = read_manifest(source)
        return manifest.root, manifest.files
    raise SystemExit(f"error: {source} is neither a folder nor a manifest file")


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
    info = {
        "checkpoint": os.path.abspath(args.checkpoint),
        "content": "clip embedding (D,)" if args.clip_only else "frame embeddings (T', D)",
        "embedding_dim": model.embedding_dim,
        "sample_rate": model.sample_rate,
        "first_timestamp": model.first_timestamp,
        "step_seconds": model.step_seconds,
        "window_seconds": model.window_steps * model.step_seconds,
        "overlap_seconds": (model.window_steps - model.hop_steps) * model.step_seconds,
    }
    with open(os.path.join(out_dir, "embedding_info.json"), "w") as f:
        json.dump(info, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("source", help="folder searched recursively for audio, or a fairseq manifest (.tsv)")
    parser.add_argument("--out-dir", required=True, help="folder for the .npy files")
    parser.add_argument("--clip-only", action="store_true", help="write the clip embedding (D,) instead of the frame embeddings (T', D)")
    parser.add_argument("--ext", default=",".join(AUDIO_EXTENSIONS), help="extensions searched in a folder (default: %(default)s)")
    args = parser.parse_args(argv)

    root, files = list_inputs(args.source, args.ext.split(","))
    outputs = output_paths(args.out_dir, files)
    todo = [(f, o) for f, o in zip(files, outputs) if not os.path.exists(o)]
    print(f"{len(files)} audio files, {len(files) - len(todo)} already done in {args.out_dir}", file=sys.stderr)
    model = load_model(args)
    os.makedirs(args.out_dir, exist_ok=True)
    write_info(args.out_dir, model, args)
    failures = []
    for relative, output in tqdm(todo, desc="embedding", unit="file"):
        try:
            result = model.embed(os.path.join(root, relative))
        except (AudioReadError, ValueError) as error:
            failures.append(f"{relative}: {error}")
            continue
        save_atomic(output, result.clip_embedding if args.clip_only else result.frame_embeddings)
    with open(os.path.join(args.out_dir, "unreadable.txt"), "w") as f:
        f.writelines(line + "\n" for line in failures)
    print(
        f"{len(todo) - len(failures)} written, {len(files) - len(todo)} skipped (already done), {len(failures)} unreadable",
        file=sys.stderr,
    )
    return report_unreadable(failures, f"unreadable files (also in {os.path.join(args.out_dir, 'unreadable.txt')}):")


def report_unreadable(failures: List[str], heading: str) -> int:
    """Print ``heading`` and one indented line per unreadable file on stderr; -> exit status, 1 if there were any."""
    if failures:
        print(heading, file=sys.stderr)
        for line in failures:
            print("  " + line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

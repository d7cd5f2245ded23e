"""Export the encoder of a checkpoint (log-mel frontend included) to TorchScript and/or ONNX.

    logmel-export CHECKPOINT --torchscript encoder.pt --onnx encoder.onnx

CHECKPOINT is a ``logmel_conformer`` pre-training or ``logmel_conformer_classifier``
fine-tuning checkpoint (its encoder is exported, without the classification
head). Each export is checked against the eager model on random waveforms of
1 s, 2.37 s and 10 s; the command fails if an embedding differs by more than
``--atol``. The ONNX check needs onnxruntime and is skipped without it.
See :mod:`fairseq_logmel_conformer.export` for the inputs and outputs.
"""
import argparse
import sys
from typing import List, Optional

from ..checkpoint import CheckpointError
from ..export import ONNX_OPSET, OnnxExportError, export_onnx, export_torchscript, load_embedder, max_abs_difference, onnx_runner, parity_lengths
from .common import add_checkpoint_arguments


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, "a logmel_conformer or logmel_conformer_classifier checkpoint (.pt)")
    parser.add_argument("--torchscript", metavar="OUT.pt", help="write the scripted encoder here")
    parser.add_argument("--onnx", metavar="OUT.onnx", help="write the ONNX encoder here")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help="ONNX opset version (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest embedding difference from the eager model accepted")
    args = parser.parse_args(argv)
    if not args.torchscript and not args.onnx:
        parser.error("give --torchscript and/or --onnx")

    try:
        embedder = load_embedder(args.checkpoint, args.user_dir)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    lengths = parity_lengths(embedder.sample_rate)
    differences = {}
    if args.torchscript:
        scripted = export_torchscript(embedder, args.torchscript)
        differences[args.torchscript] = max_abs_difference(embedder, scripted, lengths)
    if args.onnx:
        try:
            export_onnx(embedder, args.onnx, args.opset)
        except (ImportError, OnnxExportError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        try:
            run = onnx_runner(args.onnx)
        except ImportError:
            print(f"wrote {args.onnx}; onnxruntime is not installed, so it was not checked against the eager model")
        else:
            differences[args.onnx] = max_abs_difference(embedder, run, lengths)
    status = 0
    for path, difference in differences.items():
        verdict = "ok" if difference <= args.atol else f"FAILED: above --atol {args.atol:g}"
        print(f"wrote {path}; largest difference from the eager model {difference:.2e} ({verdict})")
        status |= difference > args.atol
    return int(status)


if __name__ == "__main__":
    sys.exit(main())

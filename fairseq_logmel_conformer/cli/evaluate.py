"""Evaluate a fine-tuned checkpoint on one split and write metrics.json, per_class.csv and a figure.

    logmel-evaluate CHECKPOINT --split valid --out results/ [--data MANIFEST_DIR]

metrics.json names the checkpoint, the manifest folder and the split it scored.
"""
import argparse
import json
import os
import sys
from typing import List, Optional

import numpy as np
import torch
from fairseq import utils
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model
from ..evaluation_report import write_report
from .common import add_checkpoint_arguments, add_device_arguments, device as chosen_device


def predict_split(model, task, split: str, batch_size: int, device: torch.device, progress: bool = True):
    """Clip probabilities (N, C) and multi-hot targets (N, C) of every clip of ``split``, in manifest order."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(
        dataset, max_sentences=batch_size, required_batch_size_multiple=1, ignore_invalid_inputs=False
    ).next_epoch_itr(shuffle=False)
    scores = np.zeros((len(dataset), len(model.class_names)), dtype=np.float32)
    targets = np.zeros_like(scores)
    for sample in tqdm(batches, desc=f"evaluating {split}", unit="batch", disable=None if progress else True):
        sample = utils.move_to_cuda(sample) if device.type == "cuda" else sample
        ids = sample["id"].cpu().numpy()
        scores[ids] = model.predict(**sample["net_input"]).float().cpu().numpy()
        targets[ids] = sample["target"].cpu().numpy()
    return scores, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, "a checkpoint of a logmel_conformer_classifier fine-tuning run")
    parser.add_argument("--split", default="valid", help="split to evaluate: <data>/<split>.tsv with <split>.labels (default: %(default)s)")
    parser.add_argument("--data", help="manifest folder (default: the one the model was fine-tuned on)")
    parser.add_argument("--out", required=True, help="folder for metrics.json, per_class.csv and the PNG")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch (default: %(default)s)")
    add_device_arguments(parser)
    args = parser.parse_args(argv)

    # Every clip of the split is scored: a skipped clip would count as a zero score.
    overrides = {"skip_unreadable_clips": False, **({"data": args.data} if args.data else {})}
    try:
        model, _, task = load_model(args.checkpoint, user_dir=args.user_dir, arg_overrides=overrides)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    if not hasattr(model, "class_names"):
        parser.error(f"{args.checkpoint} is not a fine-tuned classifier (model {type(model).__name__})")
    device = chosen_device(args)
    model.to(device).eval()
    scores, targets = predict_split(model, task, args.split, args.batch_size, device)
    source = {"checkpoint": os.path.abspath(args.checkpoint), "data": os.path.abspath(task.cfg.data), "split": args.split}
    metrics = write_report(args.out, scores, targets, model.class_names, model.multilabel, task.vocabulary.display_names, source)
    print(json.dumps({**source, "num_clips": len(scores), **metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

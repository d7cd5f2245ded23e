"""Evaluate a fine-tuned checkpoint on one split and write metrics.json, per_class.csv and a figure.

    logmel-evaluate CHECKPOINT --split valid --out results/ [--data MANIFEST_DIR]
"""
import argparse
import json
import sys
from typing import List, Optional

import numpy as np
import torch
from fairseq import checkpoint_utils, utils
from tqdm import tqdm

import fairseq_logmel_conformer  # noqa: F401  (registers the plugin's components)

from ..evaluation_report import write_report


def predict_split(model, task, split: str, batch_size: int, device: torch.device, progress: bool = True):
    """Clip probabilities (N, C) and multi-hot targets (N, C) of every clip of ``split``, in manifest order."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    batches = task.get_batch_iterator(
        dataset, max_sentences=batch_size, required_batch_size_multiple=1, ignore_invalid_inputs=False
    ).next_epoch_itr(shuffle=False)
    scores = np.zeros((len(dataset), len(model.class_names)), dtype=np.float32)
    targets = np.zeros_like(scores)
    for sample in tqdm(batches, desc=f"evaluating {split}", unit="batch", disable=not progress):
        sample = utils.move_to_cuda(sample) if device.type == "cuda" else sample
        ids = sample["id"].cpu().numpy()
        scores[ids] = model.predict(**sample["net_input"]).float().cpu().numpy()
        targets[ids] = sample["target"].cpu().numpy()
    return scores, targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a checkpoint of a logmel_conformer_classifier fine-tuning run")
    parser.add_argument("--split", default="valid", help="split to evaluate: <data>/<split>.tsv with <split>.labels")
    parser.add_argument("--data", help="manifest folder (default: the one the model was fine-tuned on)")
    parser.add_argument("--out", required=True, help="folder for metrics.json, per_class.csv and the PNG")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per batch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--user-dir", help="a fairseq plugin to import first, for checkpoints of tasks or models it registers")
    args = parser.parse_args(argv)
    if args.user_dir:
        utils.import_user_module(argparse.Namespace(user_dir=args.user_dir))

    # Every clip of the split is scored: a skipped clip would count as a zero score.
    overrides = {"skip_unreadable_clips": False, **({"data": args.data} if args.data else {})}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([args.checkpoint], arg_overrides=overrides)
    model = models[0]
    if not hasattr(model, "class_names"):
        parser.error(f"{args.checkpoint} is not a fine-tuned classifier (model {type(model).__name__})")
    device = torch.device(args.device)
    model.to(device).eval()
    scores, targets = predict_split(model, task, args.split, args.batch_size, device)
    metrics = write_report(args.out, scores, targets, model.class_names, model.multilabel, task.vocabulary.display_names)
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "num_clips": len(scores), **metrics}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

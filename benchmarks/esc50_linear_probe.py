"""Frozen-feature linear probe: does pre-training give better ESC features before any fine-tuning?

    python -m benchmarks.esc50_linear_probe PRETRAIN_CHECKPOINT FOLD_DIR [FOLD_DIR ...] [--out results.json]

Builds the checkpoint's ``logmel_conformer`` twice, once with the pre-trained
weights and once freshly initialised (seed 1), embeds every clip of the folds'
train and valid splits (mean over time of the latent Z and of each conformer
block's output), fits scikit-learn's logistic regression on each fold's train
split and reports its valid accuracy per layer, and the mean over the folds.
As a hand-crafted reference it probes the same way the clip mean and standard
deviation over time of each log-mel bin of the model's own frontend (the
classic bag-of-frames features), which no weight touches.
The probe is deterministic given the checkpoint, so unlike fine-tuning it
compares pre-training runs without fine-tuning noise. A diagnostic of
:mod:`benchmarks.esc50_pretrain_vs_scratch`: it separates "pre-training learnt
nothing useful" from "fine-tuning washes out what it learnt".
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from fairseq import checkpoint_utils
from omegaconf import OmegaConf
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fairseq_logmel_conformer  # noqa: F401  (registers the plugin's components)
from benchmarks.common import provenance
from fairseq_logmel_conformer.data.audio import read_audio
from fairseq_logmel_conformer.data.manifest import read_manifest
from fairseq_logmel_conformer.data.labels import LabelVocabulary, read_label_file
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig, LogmelConformerModel
from fairseq_logmel_conformer.modules.frontend import LogmelFrontend


def read_split(fold_dir: str, split: str) -> Tuple[List[str], np.ndarray]:
    """-> audio paths (N,), class indices (N,) of one split of an ESC manifest folder."""
    manifest = read_manifest(os.path.join(fold_dir, f"{split}.tsv"))
    vocabulary = LabelVocabulary.read(os.path.join(fold_dir, "labels.txt"))
    labels = read_label_file(os.path.join(fold_dir, f"{split}.labels"), vocabulary, len(manifest.files), single_label=True)
    paths = [manifest.audio_path(i) for i in range(len(manifest.files))]
    return paths, np.array([indices[0] for indices in labels])


def read_clips(paths: List[str], sample_rate: int) -> torch.Tensor:
    """-> waveforms (N, S); the clips must share a length, as ESC-50's 5 s clips do."""
    clips = [torch.as_tensor(read_audio(path, sample_rate)) for path in paths]
    for path, clip in zip(paths, clips):
        if clip.shape[0] != clips[0].shape[0]:
            raise ValueError(
                f"the probe needs clips of one length: {path} has {clip.shape[0]} samples, {paths[0]} has {clips[0].shape[0]}"
            )
    return torch.stack(clips)


@torch.no_grad()
def layer_embeddings(model: LogmelConformerModel, waveforms: torch.Tensor, batch_size: int = 32) -> List[np.ndarray]:
    """(N, S) -> [(N, latent_dim) mean latent Z, then (N, encoder_dim) mean output of each conformer block]."""
    model.eval()
    per_layer: List[List[np.ndarray]] = []
    for start in range(0, len(waveforms), batch_size):
        latents, _ = model.latents(*model.logmel(waveforms[start : start + batch_size]))
        outputs = [latents.mean(1)]
        hidden = model.context_encoder.proj_in(latents).transpose(0, 1)
        for layer in model.context_encoder.layers:
            hidden = layer(hidden, None)
            outputs.append(hidden.mean(0))
        per_layer.append([o.numpy() for o in outputs])
    return [np.concatenate([batch[k] for batch in per_layer]) for k in range(len(per_layer[0]))]


@torch.no_grad()
def logmel_statistics(frontend: LogmelFrontend, waveforms: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """(N, S) -> (N, 2 * n_mels): mean and standard deviation over time of each log-mel bin."""
    batches = []
    for start in range(0, len(waveforms), batch_size):
        logmel, _ = frontend(waveforms[start : start + batch_size])
        batches.append(torch.cat([logmel.mean(1), logmel.std(1)], dim=1).numpy())
    return np.concatenate(batches)


def probe(train: List[np.ndarray], train_y: np.ndarray, valid: List[np.ndarray], valid_y: np.ndarray) -> List[float]:
    """Valid accuracy of a standardised logistic regression per layer."""
    accuracies = []
    for x_train, x_valid in zip(train, valid):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        accuracies.append(float(classifier.fit(x_train, train_y).score(x_valid, valid_y)))
    return accuracies


def probe_folds(
    embeddings: List[np.ndarray],
    folds: List[str],
    splits: Dict[Tuple[str, str], Tuple[List[str], np.ndarray]],
    row: Dict[str, int],
) -> Dict:
    """Probe every fold on ``embeddings``: one (N, D) array per layer, the clip at ``path`` in row ``row[path]``."""
    per_fold, spread = [], []
    for fold in folds:
        (train_paths, train_y), (valid_paths, valid_y) = splits[fold, "train"], splits[fold, "valid"]
        train_rows, valid_rows = [row[p] for p in train_paths], [row[p] for p in valid_paths]
        train = [layer[train_rows] for layer in embeddings]
        valid = [layer[valid_rows] for layer in embeddings]
        per_fold.append(probe(train, train_y, valid, valid_y))
        spread.append(float(train[-1].std(0).mean()))
    return {
        "valid_accuracy_per_layer": [float(np.mean(layer)) for layer in zip(*per_fold)],
        "valid_accuracy_per_layer_per_fold": per_fold,
        "last_layer_std_across_clips": float(np.mean(spread)),
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a logmel_conformer pre-training checkpoint")
    parser.add_argument("fold_dirs", nargs="+", help="ESC manifest folders (train/valid .tsv and .labels, labels.txt), one per fold")
    parser.add_argument("--out", help="write the accuracies here as JSON, e.g. experiments/esc50_linear_probe/results/NAME.json")
    args = parser.parse_args(argv)
    torch.manual_seed(1)
    state = checkpoint_utils.load_checkpoint_to_cpu(args.checkpoint)
    cfg = OmegaConf.merge(OmegaConf.structured(LogmelConformerConfig(sample_rate=16000)), state["cfg"]["model"])
    splits = {(fold, split): read_split(fold, split) for fold in args.fold_dirs for split in ("train", "valid")}
    # Cross-validation folds share their clips: each is embedded once per model.
    paths = sorted({path for fold_paths, _ in splits.values() for path in fold_paths})
    row = {path: i for i, path in enumerate(paths)}
    waveforms = read_clips(paths, cfg.sample_rate)
    results: Dict[str, Dict] = {}
    for name in ("pretrained", "random_init"):
        model = LogmelConformerModel(cfg)
        if name == "pretrained":
            model.load_state_dict(state["model"])
        results[name] = probe_folds(layer_embeddings(model, waveforms), args.fold_dirs, splits, row)
    reference = probe_folds([logmel_statistics(model.frontend, waveforms)], args.fold_dirs, splits, row)
    results["logmel_statistics"] = {
        "valid_accuracy": reference["valid_accuracy_per_layer"][0],
        "valid_accuracy_per_fold": [accuracies[0] for accuracies in reference["valid_accuracy_per_layer_per_fold"]],
    }
    layers = ["latent_Z"] + [f"block{i + 1}" for i in range(cfg.encoder_layers)]
    payload = {**provenance("esc50_linear_probe", "cpu", argv), "checkpoint": args.checkpoint, "fold_dirs": args.fold_dirs, "layers": layers, **results}
    print(json.dumps(payload, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

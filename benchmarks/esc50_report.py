"""Curves, figure and markdown table of :mod:`benchmarks.esc50_pretrain_vs_scratch`.

fairseq writes one JSON object per log line (``common.log_format=json``):
``[train_inner][INFO] - {...}`` during training and ``[valid][INFO] - {...}``
after each validation; the curves are read back from hydra's ``hydra_train.log``.

For runs cut off before their end (no last checkpoint to evaluate), the table and figure come from the logs alone:

    python -m benchmarks.esc50_report LOG_DIR --title TITLE   # LOG_DIR/pretraining.log, LOG_DIR/<run>/<arm>.log
"""
import argparse
import json
import math
import os
from typing import Dict, Iterable, List

import numpy as np

ARMS = ("pretrained", "scratch")
# How a checkpoint is loaded and trained: a run from scratch is the same without them, so the scratch arm's command
# and folder leave them out and one scratch run serves every value.
PRETRAINED_ONLY_OVERRIDES = ("model.reinit_last_blocks=",)
PRETRAINING_AUDIO = {
    "unlabeled": "the unlabelled folder (`--unlabeled-dir`)",
    "unlabeled+esc50-other": "the unlabelled folder and, without labels, the 1,600 ESC-50 clips outside ESC-10",
    "unlabeled+training-folds": "the unlabelled folder and, without labels, the {subset} clips of fold(s) {folds}, which every "
    "evaluated fold fine-tunes on and none tests on",
}

# Srivastava et al. (ICASSP 2022): Table 3 (ESC-50, 5-fold accuracy, pre-trained on AudioSet without labels)
# and Table 1 (Balanced AudioSet mAP with and without pre-training), for the README's comparison.
PAPER_RESULTS = {
    "esc50_accuracy_cf_S_pretrained": 0.807,
    "esc50_accuracy_cf_L_pretrained": 0.880,
    "balanced_audioset_mAP_pretrained": 0.276,
    "balanced_audioset_mAP_scratch": 0.138,
    "pretraining_audio": "AudioSet, about 5,000 hours (1.9M clips of 10 s), no labels",
}


def read_log(path: str, logger: str) -> List[Dict]:
    """The JSON records that ``logger`` (e.g. ``valid``, ``train_inner``) wrote to a hydra_train.log."""
    marker = f"[{logger}][INFO] - "
    records = []
    with open(path) as f:
        for line in f:
            if marker in line:
                payload = line.split(marker, 1)[1].strip()
                if payload.startswith("{"):
                    records.append(json.loads(payload))
    return records


def validation_curve(log_path: str) -> Dict[str, List[float]]:
    """Fine-tuning run -> {"num_updates": [...], "valid_accuracy": [...]}, one point per validation."""
    records = read_log(log_path, "valid")
    return {
        "num_updates": [int(float(r["valid_num_updates"])) for r in records],
        "valid_accuracy": [float(r["valid_accuracy"]) for r in records],
    }


def pretraining_curve(log_path: str) -> Dict[str, List[float]]:
    """Pre-training run -> contrastive accuracy and loss of the training log lines and of each validation."""
    train = read_log(log_path, "train_inner")
    valid = read_log(log_path, "valid")
    return {
        "train_updates": [int(float(r["num_updates"])) for r in train],
        "train_accuracy": [float(r["accuracy"]) for r in train],
        "train_loss": [float(r["loss"]) for r in train],
        "valid_updates": [int(float(r["valid_num_updates"])) for r in valid],
        "valid_accuracy": [float(r["valid_accuracy"]) for r in valid],
        "valid_loss": [float(r["valid_loss"]) for r in valid],
    }


def write_figure(path: str, pretraining: Dict[str, List[float]], runs: Dict[str, Dict[str, Dict[str, List[float]]]], title: str) -> None:
    """Left: pre-training contrastive accuracy; right: held-out accuracy of both arms for every run (fold, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(pretraining["train_updates"], pretraining["train_accuracy"], color="0.6", lw=0.8, label="train")
    left.plot(pretraining["valid_updates"], pretraining["valid_accuracy"], "o-", color="C2", ms=3, label="valid (held-out unlabelled clips)")
    left.set(xlabel="pre-training update", ylabel="contrastive accuracy", title="pre-training: positive ranked first", ylim=(0, 1))
    left.legend(loc="lower right", fontsize=8)
    styles = {"pretrained": "C0", "scratch": "C3"}
    for arm, color in styles.items():
        curves = [arms[arm] for arms in runs.values()]
        for index, curve in enumerate(curves):
            label = f"{arm} (per run)" if len(curves) > 1 else arm
            right.plot(curve["num_updates"], curve["valid_accuracy"], "o-", ms=2, lw=0.8, color=color,
                       alpha=0.35 if len(curves) > 1 else 1.0, label=label if index == 0 else None)
        lengths = {len(curve["valid_accuracy"]) for curve in curves}
        if len(curves) > 1 and len(lengths) == 1:
            mean = np.mean([curve["valid_accuracy"] for curve in curves], axis=0)
            right.plot(curves[0]["num_updates"], mean, "-", lw=2.2, color=color, label=f"{arm} (mean of {len(curves)} runs)")
    right.set(xlabel="fine-tuning update", ylabel="accuracy on the held-out fold", title="fine-tuning: both arms alike", ylim=(0, 1))
    right.legend(loc="lower right", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    print(f"wrote {path}")


def _percent(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def training_folds(evaluated: Iterable[int]) -> List[int]:
    """The ESC folds no evaluated fold tests on: every evaluated fold fine-tunes on their clips."""
    return [fold for fold in range(1, 6) if fold not in evaluated]


def pretraining_audio_text(settings: Dict) -> str:
    """What the pre-training heard, for the report: ``--pretrain-audio`` in words, with the folds it added."""
    text = PRETRAINING_AUDIO[settings.get("pretrain_audio", "unlabeled")]
    return text.format(subset=settings["subset"].upper().replace("ESC", "ESC-"), folds=", ".join(map(str, training_folds(settings["folds"]))))


def _share(fraction: float) -> str:
    return "" if fraction == 1 else f" (a fixed random {100 * fraction:g}% of its duration)"


def pretrained_only(override: str) -> bool:
    return override.lstrip("+").startswith(PRETRAINED_ONLY_OVERRIDES)


def _overrides(overrides: List[str]) -> str:
    return " ".join(f"`{override}`" for override in overrides) or "none"


def _finetune_overrides(overrides: List[str]) -> str:
    both = _overrides([override for override in overrides if not pretrained_only(override)])
    loading = [override for override in overrides if pretrained_only(override)]
    return both + (f"; pre-trained arm only: {_overrides(loading)}" if loading else "")


def _frozen_start(updates: int) -> str:
    return f"head alone for the first {updates} updates, " if updates else "whole model from the first update, "


def write_markdown(path: str, settings: Dict, summary: Dict, pretraining: Dict, runs: Dict[str, Dict], figure: str) -> None:
    """A results table in markdown, one row per fine-tuning run (fold, seed) and the mean, with the settings that produced it."""
    lines = [
        f"# ESC pre-trained vs from scratch: {settings['subset']}, config {settings['config']}"
        f"{''.join(f', model.{o}' for o in settings.get('model_override', []))}, folds {settings['folds']}",
        "",
        "| fold | pre-trained acc. (%) | from scratch acc. (%) | difference (points) | best epoch pre-trained / scratch (%) |",
        "|---|---|---|---|---|",
    ]
    for run, arms in runs.items():
        p, s = arms["pretrained"], arms["scratch"]
        lines.append(
            f"| {run} | {_percent(p['accuracy_last'])} | {_percent(s['accuracy_last'])} | {100 * (p['accuracy_last'] - s['accuracy_last']):+.1f} "
            f"| {_percent(p['best_valid_accuracy_during_training'])} / {_percent(s['best_valid_accuracy_during_training'])} |"
        )
    lines.append(f"| mean | {_percent(summary['pretrained'])} | {_percent(summary['scratch'])} | {summary['difference_points']:+.1f} | |")
    per_seed = summary.get("difference_points_per_seed", {})
    if per_seed:
        lines += ["", "Difference per fine-tuning seed (mean over folds): " + ", ".join(f"seed {seed}: {points:+.1f}" for seed, points in per_seed.items()) + "."]
    curve = pretraining["curve"]
    last_valid = curve["valid_accuracy"][-1] if curve["valid_accuracy"] else float("nan")
    lines += [
        "",
        "Accuracy: `logmel-evaluate` on the held-out fold with the last checkpoint of each run (no selection on the test fold);",
        "the best-epoch column is read off the validation curve and is optimistic.",
        f"Pre-training: `pretrain_{settings['config']}`, {curve['valid_updates'][-1] if curve['valid_updates'] else 0} updates, "
        f"{pretraining['wall_s'] / 60:.1f} min wall, final contrastive accuracy on held-out unlabelled clips {_percent(last_valid)}%.",
        f"Pre-training audio: {pretraining_audio_text(settings)}"
        f"{_share(settings.get('pretrain_fraction', 1.0))}, {pretraining['train_hours']:.2f} h of training clips; "
        f"overrides: {_overrides(settings.get('pretrain_override', []))}.",
        f"Fine-tuning: `finetune_esc50`, {settings['finetune_updates']} updates per run, peak learning rate "
        f"{settings['finetune_lr'] or 'of the config (1e-4)'}, {_frozen_start(settings.get('freeze_encoder_updates', 0))}"
        f"seed(s) {', '.join(map(str, settings.get('finetune_seeds', [settings['seed']])))} (pre-training seed {settings['seed']}), "
        f"{settings['threads']} thread(s) per run, {settings['jobs']} run(s) at a time, on {settings['device']} in {settings['precision']}; "
        f"overrides: {_finetune_overrides(settings.get('finetune_override', []))}.",
        f"Fine-tuning time {sum(arm['finetune_train_s'] for arms in runs.values() for arm in arms.values()) / 60:.1f} min over "
        f"{sum(len(arms) for arms in runs.values())} runs (fairseq's training time, without evaluation, summed over every run "
        f"in the table, including those an earlier command trained); this command took {settings['total_wall_s'] / 60:.1f} min "
        "wall, reusing the finished runs of its work dir.",
        "",
        f"![validation accuracy]({figure})",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}")


def write_curves_markdown(path: str, runs: Dict[str, Dict[str, Dict[str, List[float]]]], title: str, figure: str) -> None:
    """Held-out accuracy of both arms, mean over runs, at every update that all runs validated, with each run's lead.

    For runs cut off before their last update, which have no last checkpoint to evaluate: fairseq validates on
    the held-out fold itself, so these are the same measurements as the curves of :func:`write_figure`.
    """
    curves = {name: {arm: dict(zip(arms[arm]["num_updates"], arms[arm]["valid_accuracy"])) for arm in ARMS} for name, arms in runs.items()}
    common = sorted(set.intersection(*(set(by_update) for arms in curves.values() for by_update in arms.values())))
    lines = [
        f"# {title}",
        "",
        f"| update | pre-trained acc. (%) | from scratch acc. (%) | difference (points) | per run: {', '.join(runs)} |",
        "|---|---|---|---|---|",
    ]
    for update in common:
        means = {arm: np.mean([arms[arm][update] for arms in curves.values()]) for arm in ARMS}
        leads = " ".join(f"{100 * (arms['pretrained'][update] - arms['scratch'][update]):+.1f}" for arms in curves.values())
        lines.append(f"| {update} | {_percent(means['pretrained'])} | {_percent(means['scratch'])} | {100 * (means['pretrained'] - means['scratch']):+.1f} | {leads} |")
    lines += ["", "fairseq's validation accuracy on each run's held-out fold, read from its hydra_train.log.", "", f"![validation accuracy]({figure})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {path}")


def main(argv=None) -> int:
    """Table and figure from the logs alone: ``LOG_DIR/pretraining.log`` and ``LOG_DIR/<run>/<arm>.log``."""
    parser = argparse.ArgumentParser(description="Validation curves of a pre-trained vs from-scratch comparison, from its fairseq logs")
    parser.add_argument("log_dir", help="folder with pretraining.log and one folder per run (fold1, ...) holding pretrained.log and scratch.log")
    parser.add_argument("--title", required=True, help="heading of the table and figure")
    args = parser.parse_args(argv)
    names = sorted(entry for entry in os.listdir(args.log_dir) if os.path.isdir(os.path.join(args.log_dir, entry)))
    runs = {name: {arm: validation_curve(os.path.join(args.log_dir, name, f"{arm}.log")) for arm in ARMS} for name in names}
    base = os.path.join(args.log_dir, "curves")
    write_figure(base + ".png", pretraining_curve(os.path.join(args.log_dir, "pretraining.log")), runs, args.title)
    write_curves_markdown(base + ".md", runs, args.title, "curves.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

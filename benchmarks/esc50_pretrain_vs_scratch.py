"""ESC-50 / ESC-10 accuracy with and without self-supervised pre-training, on real recordings.

    python -m benchmarks.esc50_pretrain_vs_scratch --esc50-dir ../shared/data/esc50 \\
        --unlabeled-dir ../shared/data/unlabeled --work-dir /tmp/esc50_bench \\
        [--subset esc10|esc50] [--folds 1 | --folds 1 2 3 4 5] [--config small|cfS] \\
        [--pretrain-updates N | --pretrain-minutes M] [--pretrain-audio unlabeled|unlabeled+esc50-other|unlabeled+training-folds] \\
        [--pretrain-fraction F] [--model-override KEY=VALUE ...] [--pretrain-override KEY=VALUE ...] [--finetune-override KEY=VALUE ...] [--finetune-updates N] [--finetune-lr LR] [--finetune-seeds 1 2 3] \\
        [--device cpu|cuda] [--precision fp32|fp16|bf16] [--threads 1] [--jobs N]

Every step runs the project's own command lines, so the numbers describe what
users run: (1) ``logmel-manifest`` on the unlabelled folder and
``logmel-prepare esc50`` for the folds; (2) ``fairseq-hydra-train
--config-name pretrain_<config>`` on the unlabelled audio; (3) for each fold,
``fairseq-hydra-train --config-name finetune_esc50`` twice with identical
settings and seed, once from the pre-trained checkpoint and once from scratch
(``+encoder=<config>``, the same architecture); (4) ``logmel-evaluate`` on the
held-out fold with the last checkpoint of each run (``--jobs`` runs at a time,
each fine-tuning then evaluating); with ``--finetune-seeds``,
both arms are fine-tuned once per seed and the table reports every (fold, seed)
run and their mean, so a difference is not one seed's luck. It writes
``experiments/esc50_pretrain_vs_scratch/results/<name>.{json,md,png}``: every
setting, command, commit and machine with the accuracies, a markdown table, and
the validation-accuracy curves of both arms beside the pre-training
(contrastive) accuracy curve. ``--pretrain-audio
unlabeled+esc50-other`` adds the ESC-50 clips of the 40 classes outside ESC-10
to the pre-training audio, without their labels (ESC-10 only, so no clip of the
evaluated subset is ever seen in pre-training); ``unlabeled+training-folds`` adds
the clips of the evaluated subset in the folds outside ``--folds`` (``--folds 1 2 3``:
folds 4 and 5), in-domain audio that every evaluated fold fine-tunes on and none
tests on, so one pre-training serves those folds; ``--pretrain-fraction`` keeps a
fixed share of that audio's duration, for scaling studies. Audio and checkpoints stay in
``--work-dir``. Re-running with the same ``--work-dir`` reuses finished runs (so fine-tuning
settings can be compared on one pre-trained checkpoint) and fairseq resumes
unfinished ones from their ``checkpoint_last.pt``. Times are fairseq's own
("done training in"), so they hold for reused runs too.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, List, Optional

import numpy as np
from omegaconf import OmegaConf

from benchmarks.common import PRECISIONS, precision_overrides, results_dir, write_json
from benchmarks.esc50_report import ARMS, PAPER_RESULTS, pretrained_only, pretraining_curve, training_folds, validation_curve, write_figure, write_markdown
from fairseq_logmel_conformer import CONFIG_DIR
from fairseq_logmel_conformer.data.manifest import write_manifest
from fairseq_logmel_conformer.data.manifest import read_manifest
from fairseq_logmel_conformer.prepare.esc50 import read_metadata

BENCHMARK = "esc50_pretrain_vs_scratch"
BIN_DIR = os.path.dirname(sys.executable)
# The module behind each console script, for an environment that has the package on PYTHONPATH but not installed.
COMMAND_MODULES = {
    "fairseq-hydra-train": "fairseq_cli.hydra_train",
    "logmel-manifest": "fairseq_logmel_conformer.cli.make_manifest",
    "logmel-evaluate": "fairseq_logmel_conformer.cli.evaluate",
}
# Settings that do not change the numbers: a rerun that differs only in these may replace a result of the same name.
NOT_RESULT_SETTINGS = (
    "work_dir", "esc50_dir", "unlabeled_dir", "jobs", "threads", "threads_pretrain", "name", "results_dir", "note", "total_wall_s",
)
# pretrain_<config> and its fine-tuning encoder group +encoder=<config> describe the same conformer.
CONFIGS = ("small", "cfS")


def console_command(name: str) -> List[str]:
    """The console script ``name`` of this Python's environment, or ``python -m`` its module where it is not installed."""
    script = os.path.join(BIN_DIR, name)
    return [script] if os.path.exists(script) else [sys.executable, "-m", COMMAND_MODULES[name]]


def run(command: List[str], cwd: str, threads: int, log_path: str) -> float:
    """Run one command with ``threads`` torch/OpenMP threads, its output in ``log_path``; -> wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    os.makedirs(cwd, exist_ok=True)
    print(f"$ {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        status = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if status != 0:
        raise SystemExit(f"command failed with status {status}, see {log_path}: {' '.join(command)}")
    return time.perf_counter() - start


def training_seconds(out: str) -> Optional[float]:
    """fairseq's own training time of the run writing to ``out``, None if unfinished.

    The ``wall`` meter at the run's last end-of-epoch line: checkpoints carry it over a resume, where "done training
    in X seconds" counts only the last process. A finished run is not started again: fairseq would resume it and
    add one more update.
    """
    log = os.path.join(out, "run", "hydra_train.log")
    if not os.path.isfile(log):
        return None
    with open(log) as f:
        text = f.read()
    if "done training in" not in text:
        return None
    return float(re.findall(r'\[train\]\[INFO\] - \{.*"train_wall": "([0-9.]+)"', text)[-1])


def unlabeled_name(dirs: List[str]) -> str:
    """``unlabeled`` for one ``--unlabeled-dir``; for several, their folder names joined by ``+``
    (``unlabeled+unlabeled_sfx``), so that other audio never shares a run folder or a result."""
    return "unlabeled" if len(dirs) == 1 else "+".join(os.path.basename(os.path.normpath(d)) for d in dirs)


def pretraining_audio_name(args: argparse.Namespace) -> str:
    """The pre-training audio as folders name it: ``--pretrain-audio``, with ``unlabeled`` spelt out as the folders
    of several ``--unlabeled-dir`` and ``training-folds`` as the subset and folds it adds (``unlabeled+esc50-folds45``),
    since --folds changes it."""
    name = args.pretrain_audio
    if name == "unlabeled+training-folds":
        name = f"unlabeled+{args.subset}-folds{''.join(map(str, training_folds(args.folds)))}"
    return args.unlabeled_name + name[len("unlabeled"):]


def added_pretraining_clips(args: argparse.Namespace) -> List[str]:
    """File names of the ESC-50 clips that ``--pretrain-audio`` adds to the unlabelled folder, without their labels."""
    metadata = os.path.join(args.esc50_dir, "meta", "esc50.csv")
    if args.pretrain_audio == "unlabeled+esc50-other":
        esc10 = {filename for _, filename, _ in read_metadata(metadata, esc10=True)[1]}
        return [filename for _, filename, _ in read_metadata(metadata, esc10=False)[1] if filename not in esc10]
    folds = set(training_folds(args.folds))
    return [filename for fold, filename, _ in read_metadata(metadata, esc10=args.subset == "esc10")[1] if fold in folds]


def pretraining_audio_dir(args: argparse.Namespace) -> str:
    """The folder ``logmel-manifest`` reads for pre-training: ``--unlabeled-dir``, or a folder of links to the
    ``--unlabeled-dir`` folders and to the ESC-50 clips that ``--pretrain-audio`` adds (``esc50_other/`` or, e.g.,
    ``esc50_folds45/``)."""
    if args.pretrain_audio == "unlabeled" and len(args.unlabeled_dir) == 1:
        return args.unlabeled_dir[0]
    name = pretraining_audio_name(args)
    folder = os.path.join(args.work_dir, "pretraining_audio", name)
    os.makedirs(folder, exist_ok=True)
    for index, unlabeled in enumerate(args.unlabeled_dir):
        link = os.path.join(folder, "unlabeled" if len(args.unlabeled_dir) == 1 else f"unlabeled{index}_{os.path.basename(unlabeled)}")
        if not os.path.lexists(link):
            os.symlink(unlabeled, link)
    if args.pretrain_audio == "unlabeled":
        return folder
    added = os.path.join(folder, name.split("+")[-1].replace("-", "_"))
    os.makedirs(added, exist_ok=True)
    for filename in added_pretraining_clips(args):
        if not os.path.lexists(os.path.join(added, filename)):
            os.symlink(os.path.join(args.esc50_dir, "audio", filename), os.path.join(added, filename))
    return folder


def build_manifests(args: argparse.Namespace) -> Dict[str, str]:
    """-> {"unlabeled": pre-training manifest folder, "esc": folder holding fold1 ... fold5}."""
    folders = {
        "unlabeled": os.path.join(args.work_dir, "manifests", pretraining_audio_name(args)),
        "esc": os.path.join(args.work_dir, "manifests", args.subset),
    }
    if not os.path.isfile(os.path.join(folders["unlabeled"], "train.tsv")):
        run([*console_command("logmel-manifest"), pretraining_audio_dir(args), "--dest", folders["unlabeled"], "--valid-percent", "0.05"],
            args.work_dir, args.threads, os.path.join(args.work_dir, f"manifest_{pretraining_audio_name(args)}.log"))
    if args.pretrain_fraction < 1:
        folders["unlabeled"] = subset_manifest(folders["unlabeled"], args.pretrain_fraction, f"{folders['unlabeled']}_frac{args.pretrain_fraction:g}")
    if not os.path.isfile(os.path.join(folders["esc"], "fold5", "valid.tsv")):
        command = [sys.executable, "-m", "fairseq_logmel_conformer.prepare", "esc50", args.esc50_dir, "--out", folders["esc"], "--jobs", str(args.threads)]
        run(command + (["--esc10"] if args.subset == "esc10" else []), args.work_dir, args.threads, os.path.join(args.work_dir, f"manifest_{args.subset}.log"))
    return folders


def subset_manifest(source: str, fraction: float, dest: str) -> str:
    """Write ``dest`` with the clips making up the first ``fraction`` of ``source``'s training audio duration, taken in
    a fixed random order (so a smaller fraction keeps a subset of a larger one's clips), and ``source``'s valid.tsv
    unchanged, so the held-out contrastive accuracy is measured on the same clips at every fraction."""
    full = read_manifest(os.path.join(source, "train.tsv"))
    order = np.random.default_rng(0).permutation(len(full.files))
    kept_samples = np.cumsum(np.asarray(full.sizes)[order])
    count = int(np.searchsorted(kept_samples, fraction * kept_samples[-1])) + 1
    os.makedirs(dest, exist_ok=True)
    write_manifest(os.path.join(dest, "train.tsv"), full.root, [(full.files[i], full.sizes[i]) for i in sorted(order[:count])])
    shutil.copyfile(os.path.join(source, "valid.tsv"), os.path.join(dest, "valid.tsv"))
    return dest


def manifest_hours(manifest_dir: str, sample_rate: int = 16000) -> float:
    """Hours of audio in ``manifest_dir/train.tsv``, whose lengths ``logmel-manifest`` counts at 16 kHz."""
    return float(read_manifest(os.path.join(manifest_dir, "train.tsv")).sizes.sum()) / sample_rate / 3600


def device_overrides(args: argparse.Namespace) -> List[str]:
    """Where and in which precision every training command runs: the same for pre-training and both arms."""
    return [f"common.cpu={args.device == 'cpu'}", *precision_overrides(args.precision)]


def pretrain_command(args: argparse.Namespace, manifest_dir: str, out: str) -> List[str]:
    """The pre-training command line, with its outputs under ``out``."""
    command = [
        *console_command("fairseq-hydra-train"), "--config-name", f"pretrain_{args.config}",
        f"task.data={manifest_dir}", *device_overrides(args), f"common.seed={args.seed}",
        f"checkpoint.save_dir={out}/checkpoints", f"hydra.run.dir={out}/run",
        *(f"++model.{override}" for override in args.model_override), *args.pretrain_override,
    ]
    if args.pretrain_updates is not None:
        command.append(f"optimization.max_update={args.pretrain_updates}")
    if args.pretrain_minutes is not None:
        command.append(f"optimization.stop_time_hours={args.pretrain_minutes / 60}")
    return command


def pretrain(args: argparse.Namespace, manifest_dir: str) -> Dict:
    """Pre-train on the unlabelled manifests; -> {"checkpoint", "log", "wall_s", "command", "train_hours"}."""
    out = os.path.join(args.work_dir, f"pretrain_{architecture(args)}_{pretraining_run(args)}")
    command = pretrain_command(args, manifest_dir, out)
    if training_seconds(out) is None:
        run(command, out, args.threads_pretrain, os.path.join(out, "stdout.log"))
    return {"checkpoint": os.path.join(out, "checkpoints", "checkpoint_last.pt"), "log": os.path.join(out, "run", "hydra_train.log"),
            "wall_s": training_seconds(out), "command": " ".join(command), "train_hours": round(manifest_hours(manifest_dir), 3)}


def slug(override: str) -> str:
    """A Hydra override as a folder-name part: ``model.mask_prob=0.5`` -> ``model.mask-prob-0.5``."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", override)


def arch_config(name: str):
    """``config/pretraining/arch/<name>.yaml`` over the architectures its defaults list names."""
    config = OmegaConf.load(os.path.join(CONFIG_DIR, "pretraining", "arch", f"{name}.yaml"))
    parents = config.pop("defaults", [])
    return OmegaConf.merge(*(arch_config(parent) for parent in parents), config)


def architecture(args: argparse.Namespace) -> str:
    """Name of the conformer both arms train: the config, its log-mel normalisation, then any other --model-override.

    The normalisation is always named (``small_feature-norm-global``): runs from before the configs set
    ``feature_norm: global`` used ``layer`` under the bare config name, and must never be reused for it.
    """
    overrides = list(args.model_override)
    if not any(override.startswith("feature_norm=") for override in overrides):
        overrides.insert(0, f"feature_norm={arch_config(args.config).feature_norm}")
    return args.config + "".join("_" + slug(override) for override in overrides)


def pretraining_setting(args: argparse.Namespace) -> str:
    """Name of everything but the seed that changes the pre-training: the budget, then any other audio and overrides.

    The budget is ``pt10000`` (updates), ``pt30min`` (wall minutes), both joined by ``-``, or ``ptconfig``.
    """
    budget = [f"{args.pretrain_updates}" if args.pretrain_updates else "", f"{args.pretrain_minutes:g}min" if args.pretrain_minutes else ""]
    setting = "pt" + ("-".join(part for part in budget if part) or "config")
    setting += "" if pretraining_audio_name(args) == "unlabeled" else f"_{pretraining_audio_name(args).replace('+', '_')}"
    setting += "" if args.pretrain_fraction == 1 else f"_frac{args.pretrain_fraction:g}"
    setting += "" if args.precision == "fp32" else f"_{args.precision}"
    return setting + "".join("_" + slug(override) for override in args.pretrain_override)


def pretraining_run(args: argparse.Namespace) -> str:
    """Name of one pre-training run in the work dir: its setting and seed."""
    return f"{pretraining_setting(args)}_seed{args.seed}"


def finetune_overrides(args: argparse.Namespace, arm: str) -> List[str]:
    """``--finetune-override`` as one arm takes it: the scratch arm leaves out those of how a checkpoint loads."""
    return [override for override in args.finetune_override if arm == "pretrained" or not pretrained_only(override)]


def finetune_command(args: argparse.Namespace, fold_dir: str, out: str, checkpoint: Optional[str], seed: int) -> List[str]:
    """The fine-tuning command line; both arms differ only in where the encoder comes from and how it is loaded."""
    # The pre-trained arm takes the architecture, --model-override included, from its checkpoint.
    encoder = [f"model.pretrained_path={checkpoint}"] if checkpoint else [
        "model.pretrained_path=null", f"+encoder={args.config}", *(f"++model.encoder.{override}" for override in args.model_override)
    ]
    return [
        *console_command("fairseq-hydra-train"), "--config-name", "finetune_esc50",
        f"task.data={fold_dir}", *encoder, *device_overrides(args), f"common.seed={seed}", "dataset.num_workers=0",
        f"optimization.max_update={args.finetune_updates}", *([f"optimization.lr=[{args.finetune_lr}]"] if args.finetune_lr else []),
        f"model.freeze_encoder_updates={args.freeze_encoder_updates}", f"task.train_fraction={args.finetune_train_fraction}",
        # Only the last checkpoint is evaluated: save it every quarter of the run, so a cut-off run resumes,
        # rather than every epoch (ten runs on one GPU would write gigabytes each epoch).
        "checkpoint.save_interval=1000000", f"checkpoint.save_interval_updates={max(1, args.finetune_updates // 4)}",
        "checkpoint.keep_interval_updates=1", f"checkpoint.save_dir={out}/checkpoints", f"hydra.run.dir={out}/run",
        *finetune_overrides(args, "pretrained" if checkpoint else "scratch"),
    ]


def finetune_setting(args: argparse.Namespace, arm: str = "pretrained") -> str:
    setting = f"u{args.finetune_updates}_lr{args.finetune_lr or 'config'}"
    setting += "" if args.precision == "fp32" else f"_{args.precision}"
    setting += f"_freeze{args.freeze_encoder_updates}" if args.freeze_encoder_updates else ""
    setting += f"_trainfrac{args.finetune_train_fraction:g}" if args.finetune_train_fraction < 1 else ""
    return setting + "".join("_" + slug(override) for override in finetune_overrides(args, arm))


def finetune_dir(args: argparse.Namespace, fold: int, seed: int, arm: str) -> str:
    """Folder of one fine-tuning run; everything that changes a run is in its path, so reuse never mixes settings.

    The scratch arm does not depend on the pre-training, so one scratch run per fold, seed and fine-tuning
    setting serves every pre-training setting compared in the same work dir.
    """
    runs = os.path.join(args.work_dir, args.subset, f"fold{fold}", f"{architecture(args)}_{finetune_setting(args, arm)}_ftseed{seed}")
    return os.path.join(runs, "scratch" if arm == "scratch" else f"pretrained_{pretraining_run(args)}")


def finetune_and_evaluate(args: argparse.Namespace, fold: int, seed: int, arm: str, fold_dir: str, pretrained: str) -> Dict:
    """Fine-tune one arm on one fold with one seed (unless its work dir holds the finished run), then evaluate it
    on the held-out fold with its last checkpoint; -> the run's result."""
    out = finetune_dir(args, fold, seed, arm)
    command = finetune_command(args, fold_dir, out, pretrained if arm == "pretrained" else None, seed)
    if training_seconds(out) is None:
        run(command, out, args.threads, os.path.join(out, "stdout.log"))
    evaluation = os.path.join(out, "evaluation")
    evaluate = [*console_command("logmel-evaluate"), os.path.join(out, "checkpoints", "checkpoint_last.pt"),
                "--split", "valid", "--out", evaluation, "--device", args.device]
    run(evaluate, out, args.threads, os.path.join(out, "evaluate.log"))
    metrics = read_json(os.path.join(evaluation, "metrics.json"))["metrics"]
    curve = validation_curve(os.path.join(out, "run", "hydra_train.log"))
    print(f"fold {fold} seed {seed} {arm}: accuracy {metrics['accuracy']:.4f}", flush=True)
    return {
        "accuracy_last": metrics["accuracy"],
        "best_valid_accuracy_during_training": max(curve["valid_accuracy"]) if curve["valid_accuracy"] else float("nan"),
        "metrics": metrics,
        "curve": curve,
        "finetune_train_s": training_seconds(out),
        "command": " ".join(command),
    }


def finetune_all(args: argparse.Namespace, fold_dirs: Dict[int, str], pretrained: str) -> Dict[str, Dict[str, Dict]]:
    """Every (fold, seed, arm) run, ``--jobs`` of them at a time; -> {run name: {arm: result}}."""
    keys = [(fold, seed, arm) for seed in args.finetune_seeds for fold in args.folds for arm in ARMS]
    # Threads only wait on the subprocesses, which do the work.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {key: pool.submit(finetune_and_evaluate, args, key[0], key[1], key[2], fold_dirs[key[0]], pretrained) for key in keys}
        results = {key: future.result() for key, future in futures.items()}
    return {
        run_name(fold, seed, args.finetune_seeds): {arm: results[(fold, seed, arm)] for arm in ARMS}
        for seed in args.finetune_seeds
        for fold in args.folds
    }


def run_name(fold: int, seed: int, seeds: List[int]) -> str:
    """Row name of one fine-tuning run in the results: ``fold3``, or ``fold3 seed2`` when there are several seeds."""
    return f"fold{fold}" if len(seeds) == 1 else f"fold{fold} seed{seed}"


def mean_accuracy(runs: Iterable[Dict], arm: str) -> float:
    return float(np.mean([run[arm]["accuracy_last"] for run in runs]))


def read_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def share(text: str) -> float:
    """argparse type of the two fraction flags: a share in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return value


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--esc50-dir", required=True, help="ESC-50 folder with meta/esc50.csv and audio/")
    parser.add_argument(
        "--unlabeled-dir", required=True, nargs="+",
        help="folder(s) of unlabelled audio for pre-training (searched recursively); several are pre-trained on together",
    )
    parser.add_argument("--work-dir", required=True, help="folder for manifests, checkpoints and logs (not committed)")
    parser.add_argument("--subset", choices=("esc10", "esc50"), default="esc10", help="ESC-10 (400 clips, 10 classes) or all of ESC-50")
    parser.add_argument("--folds", type=int, nargs="+", default=[1], choices=range(1, 6), help="held-out folds to run (1-5)")
    parser.add_argument("--config", choices=CONFIGS, default="small", help="pretrain_<config> and +encoder=<config>: small (CPU) or the paper's cfS")
    parser.add_argument("--pretrain-updates", type=int, help="pre-training budget in updates (default: the config's max_update)")
    parser.add_argument("--pretrain-minutes", type=float, help="pre-training budget in wall minutes (fairseq's stop_time_hours)")
    parser.add_argument(
        "--pretrain-audio", choices=("unlabeled", "unlabeled+esc50-other", "unlabeled+training-folds"), default="unlabeled",
        help="pre-training audio: --unlabeled-dir; or also, without labels, the ESC-50 clips outside ESC-10 (--subset esc10 "
        "only), or the --subset clips of the folds outside --folds (in-domain audio the evaluated folds train on, never test on)",
    )
    parser.add_argument(
        "--pretrain-fraction", type=share, default=1.0,
        help="pre-train on this share (0-1] of the pre-training audio's duration, a fixed random subset of its clips",
    )
    parser.add_argument(
        "--model-override", nargs="+", default=[], metavar="KEY=VALUE",
        help="logmel_conformer settings of both arms, e.g. feature_norm=layer: ++model.KEY in pre-training, "
        "++model.encoder.KEY from scratch (the pre-trained arm inherits them)",
    )
    parser.add_argument(
        "--pretrain-override", nargs="+", default=[], metavar="KEY=VALUE",
        help="extra Hydra overrides of the pre-training command, e.g. task.min_sample_size=32000",
    )
    parser.add_argument("--finetune-updates", type=int, default=150, help="fine-tuning updates per run (finetune_esc50 uses 4000)")
    parser.add_argument("--finetune-lr", type=float, help="peak fine-tuning learning rate of both arms (default: finetune_esc50's 1e-4)")
    parser.add_argument(
        "--freeze-encoder-updates", type=int, default=0,
        help="both arms train only the head for this many updates first (model.freeze_encoder_updates)",
    )
    parser.add_argument(
        "--finetune-train-fraction", type=share, default=1.0,
        help="both arms fine-tune on this fraction (0-1] of each fold's training clips, covering every class and drawn "
        "from the fine-tuning seed (task.train_fraction): fewer labels",
    )
    parser.add_argument(
        "--finetune-override", nargs="+", default=[], metavar="KEY=VALUE",
        help="extra Hydra overrides of both arms' fine-tuning commands, e.g. criterion.consistency_weight=0; those of how a "
        "checkpoint loads (model.reinit_last_blocks) go to the pre-trained arm "
        "alone, and the scratch runs without them serve every value",
    )
    parser.add_argument("--seed", type=int, default=1, help="common.seed of pre-training (and of fine-tuning, unless --finetune-seeds)")
    parser.add_argument("--finetune-seeds", type=int, nargs="+", help="fine-tune both arms once per seed (default: --seed); the summary averages all runs")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where pre-training, fine-tuning and evaluation run")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fp32",
        help="fairseq's common.fp16 / common.bf16 for pre-training and both arms; named in run folders unless fp32",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each fine-tuning / evaluation process")
    parser.add_argument("--threads-pretrain", type=int, default=2, help="torch threads of the pre-training process")
    parser.add_argument(
        "--jobs", type=int, default=1,
        help="fine-tuning runs (fold x seed x arm) at a time, one process each: 2 runs the two arms of a fold together; "
        "one GPU, which a single run leaves mostly idle, took 10 (five folds x two arms)",
    )
    parser.add_argument(
        "--note", action="append", default=[],
        help="a line for the results' notes, e.g. how the audio was carried to the machine (repeatable)",
    )
    parser.add_argument("--name", help="results file name (default: <subset>_<config>_folds<folds>); every setting is in the JSON")
    parser.add_argument("--results-dir", default=results_dir(BENCHMARK), help="folder of the results files (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.pretrain_audio == "unlabeled+esc50-other" and args.subset != "esc10":
        parser.error("--pretrain-audio unlabeled+esc50-other holds out only ESC-10: use it with --subset esc10")
    if args.pretrain_audio == "unlabeled+training-folds" and not training_folds(args.folds):
        parser.error("--pretrain-audio unlabeled+training-folds adds the folds outside --folds, and --folds names all five")
    args.finetune_seeds = args.finetune_seeds or [args.seed]
    args.work_dir = os.path.abspath(args.work_dir)
    args.esc50_dir, args.unlabeled_dir = os.path.abspath(args.esc50_dir), [os.path.abspath(d) for d in args.unlabeled_dir]
    # A setting of the results (unlike the folders' paths): other audio gives other numbers.
    args.unlabeled_name = unlabeled_name(args.unlabeled_dir)
    return args


def default_name(args: argparse.Namespace) -> str:
    """A short results file name from a few key settings: ``esc50_cfS_folds12345``. The JSON holds all of them."""
    return f"{args.subset}_{args.config}_folds{''.join(map(str, args.folds))}"


def same_results_setting(recorded: Dict, settings: Dict) -> bool:
    """Whether two runs' settings agree on everything that changes their numbers."""
    def kept(values: Dict) -> Dict:
        return {key: value for key, value in values.items() if key not in NOT_RESULT_SETTINGS}

    return kept(recorded) == kept(json.loads(json.dumps(settings)))


def results_base(args: argparse.Namespace, settings: Dict) -> str:
    """``<results dir>/<name>``, numbered ``<name>_2``, ``_3``, ... past files that hold another setting's results:
    a rerun of the same setting replaces its own files, never another's."""
    name = args.name or default_name(args)
    base, number = os.path.join(args.results_dir, name), 1
    while os.path.isfile(base + ".json") and not same_results_setting(read_json(base + ".json")["settings"], settings):
        number += 1
        base = os.path.join(args.results_dir, f"{name}_{number}")
    return base


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    manifests = build_manifests(args)
    pretraining = pretrain(args, manifests["unlabeled"])
    pretraining["curve"] = pretraining_curve(pretraining["log"])
    runs = finetune_all(args, {fold: os.path.join(manifests["esc"], f"fold{fold}") for fold in args.folds}, pretraining["checkpoint"])
    summary = {arm: mean_accuracy(runs.values(), arm) for arm in ARMS}
    summary["difference_points"] = round(100 * (summary["pretrained"] - summary["scratch"]), 2)
    if len(args.finetune_seeds) > 1:
        per_seed = {seed: [runs[run_name(fold, seed, args.finetune_seeds)] for fold in args.folds] for seed in args.finetune_seeds}
        summary["difference_points_per_seed"] = {
            str(seed): round(100 * (mean_accuracy(seed_runs, "pretrained") - mean_accuracy(seed_runs, "scratch")), 2)
            for seed, seed_runs in per_seed.items()
        }
    total_wall = time.perf_counter() - began
    settings = {key: value for key, value in vars(args).items()}
    settings["total_wall_s"] = round(total_wall, 1)
    results = {"summary": summary, "pretraining": pretraining, "folds": runs, "paper": PAPER_RESULTS}
    base = results_base(args, settings)
    notes = [
        "accuracy_last: logmel-evaluate on the held-out fold with the last fine-tuning checkpoint (no model selection on the test fold)",
        "best_valid_accuracy_during_training is the best epoch on the held-out fold itself: optimistic, for the curves only",
        *args.note,
    ]
    write_json(base + ".json", BENCHMARK, settings, results, args.device, notes, argv)
    write_figure(base + ".png", pretraining["curve"], {name: {arm: arms[arm]["curve"] for arm in ARMS} for name, arms in runs.items()}, os.path.basename(base))
    write_markdown(base + ".md", settings, summary, pretraining, runs, os.path.basename(base + ".png"))
    print(f"pre-trained {100 * summary['pretrained']:.1f}% vs scratch {100 * summary['scratch']:.1f}% ({summary['difference_points']:+.1f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

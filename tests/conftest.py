"""Shared fixtures: generated audio, manifests, and a helper to run fairseq's CLI in a subprocess."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import torch

from fairseq_logmel_conformer.data.synthetic import SOUND_CLASSES, write_dataset, write_label_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.path.dirname(sys.executable)
# The benchmarks package is not installed; tests import its helpers from the checkout.
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

# The CI machine has 2 cores; more threads than that only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_script(path):
    """The Python file at ``path`` as a module, for scripts outside any package (examples, experiments)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_labelled_corpus(folder, num_train, num_valid, seconds=(1.0, 3.0), seed=0):
    """Generated clips of the SOUND_CLASSES with train/valid manifests, label files and labels.txt in ``folder``."""
    clips = write_dataset(folder, num_clips=num_train + num_valid, seconds=seconds, seed=seed)
    write_label_files(folder, clips[:num_train], "train", classes=SOUND_CLASSES)
    write_label_files(folder, clips[num_train:], "valid")
    return folder


def tagging_corpus(labelled_corpus, tmp_path):
    """The labelled corpus with a second label on every other clip (multi-label) and one clip with none.

    Only the manifests and label files are copied: the manifests name the audio by its absolute folder."""
    folder = os.path.join(str(tmp_path), "tagging")
    os.makedirs(folder)
    shutil.copy(os.path.join(labelled_corpus, "labels.txt"), folder)
    for split in ("train", "valid"):
        shutil.copy(os.path.join(labelled_corpus, f"{split}.tsv"), folder)
        with open(os.path.join(labelled_corpus, f"{split}.labels")) as f:
            lines = f.read().splitlines()
        lines = [f"{label},{SOUND_CLASSES[(i + 1) % 5]}" if i % 2 else label for i, label in enumerate(lines)]
        lines[0] = ""
        with open(os.path.join(folder, f"{split}.labels"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def labelled_corpus(tmp_path_factory):
    return write_labelled_corpus(str(tmp_path_factory.mktemp("corpus")), num_train=20, num_valid=10)


def run_cli(args, cwd, timeout=600, env=None):
    """Run a console script of this venv (e.g. ``fairseq-hydra-train``); fail the test with its output on error."""
    command = [os.path.join(BIN_DIR, args[0])] + list(args[1:])
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def hydra_train(config_name, workdir, *overrides, config_dir=None, env=None):
    """``fairseq-hydra-train --config-name CONFIG`` on CPU with its outputs under ``workdir``."""
    return run_cli(
        [
            "fairseq-hydra-train",
            *(["--config-dir", config_dir] if config_dir else []),
            "--config-name",
            config_name,
            "common.cpu=true",
            "common.log_format=json",
            f"checkpoint.save_dir={workdir}/checkpoints",
            f"hydra.run.dir={workdir}/run",
            *overrides,
        ],
        cwd=workdir,
        env=env,
    )


@pytest.fixture(scope="session")
def pretrained_checkpoint(tmp_path_factory):
    """A pretrain_tiny checkpoint from the real fairseq-hydra-train, on generated audio (about 5 s)."""
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    write_dataset(os.path.join(workdir, "audio"), num_clips=24, seconds=(1.0, 4.0), seed=1)
    run_cli(["logmel-manifest", os.path.join(workdir, "audio"), "--dest", os.path.join(workdir, "manifest"), "--valid-percent", "0.25", "--jobs", "1"], cwd=workdir)
    hydra_train("pretrain_tiny", workdir, f"task.data={workdir}/manifest", "optimization.max_update=6")
    return os.path.join(workdir, "checkpoints", "checkpoint_last.pt")


@pytest.fixture(scope="session")
def finetuned_checkpoint(tmp_path_factory, labelled_corpus, pretrained_checkpoint):
    """A finetune_esc50 checkpoint of a few updates from ``pretrained_checkpoint`` on the labelled corpus."""
    workdir = str(tmp_path_factory.mktemp("finetune"))
    hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", f"model.pretrained_path={pretrained_checkpoint}",
        "optimization.max_update=4", "dataset.batch_size=8", "dataset.num_workers=0",
    )
    return os.path.join(workdir, "checkpoints", "checkpoint_last.pt")

"""Interrupted pre-training runs with the real fairseq-hydra-train on generated audio (CPU, fixed seed).

* SIGKILL after a mid-epoch checkpoint, then the same command again: the run
  resumes from checkpoint_last.pt and logs exactly the losses (and learning
  rates, accuracies, gradient norms) of an uninterrupted run from there on;
  eager, and with the training step compiled (``model.compile``, with the
  ``aot_eager`` backend: the same graphs as inductor's, without its minute of
  code generation on this CPU).
* Checkpoints cut short (a full disk during a save): the check of
  ``fairseq_logmel_conformer.checkpoint`` names the damaged file, and the
  launch script falls back to the previous intact checkpoint and resumes.
"""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import BIN_DIR, REPO_ROOT, hydra_train, run_cli, write_labelled_corpus

# 64 one-second clips, 4 per batch: 16 updates per epoch, so every save (each 4 updates) of a run of
# 14 updates is mid-epoch, and a kill that comes late still leaves a mid-epoch checkpoint_last.pt.
TRAINING = [
    "dataset.max_tokens=64000",
    "dataset.required_batch_size_multiple=1",
    "checkpoint.save_interval_updates=4",
    "common.log_interval=1",
]
LOGGED = ("loss", "lr", "accuracy", "gnorm")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(str(tmp_path_factory.mktemp("resume_corpus")), num_train=64, num_valid=4, seconds=(1.0, 1.0), seed=5)


# One block with a short kernel keeps the compiled variant's tracing short; the eager run keeps pretrain_tiny.
COMPILED = ["model.compile=true", "model.compile_mode=aot_eager", "model.encoder_layers=1", "model.first_kernel_size=3"]


def command(corpus: str, workdir: str, max_update: int, extra=()):
    return [
        os.path.join(BIN_DIR, "fairseq-hydra-train"), "--config-name", "pretrain_tiny", "common.cpu=true", "common.log_format=json",
        f"checkpoint.save_dir={workdir}/checkpoints", f"hydra.run.dir={workdir}/run", f"task.data={corpus}",
        f"optimization.max_update={max_update}",
    ] + TRAINING + list(extra)


def logged_updates(log: str):
    """{num_updates: {loss, lr, accuracy, gnorm}} from fairseq's per-update json log lines."""
    updates = {}
    for line in log.splitlines():
        if "[train_inner]" in line:
            record = json.loads(line.split(" - ", 1)[1])
            updates[int(record["num_updates"])] = {key: record[key] for key in LOGGED}
    return updates


def checkpoint_position(path: str):
    state = torch.load(path, map_location="cpu", weights_only=False)
    iterator = state["extra_state"]["train_iterator"]
    return state["optimizer_history"][-1]["num_updates"], iterator["epoch"], iterator["iterations_in_epoch"]


@pytest.mark.parametrize("extra", [[], COMPILED], ids=["eager", "compiled"])
def test_sigkill_after_mid_epoch_checkpoint_then_same_command_reproduces_the_losses(corpus, tmp_path, extra):
    full = str(tmp_path / "full")
    os.makedirs(full)
    run = hydra_train("pretrain_tiny", full, f"task.data={corpus}", "optimization.max_update=14", *TRAINING, *extra)
    uninterrupted = logged_updates(run.stdout)
    if extra:
        # Equal clips, unpadded: one graph for the model's pass, one for the loss, for the whole run.
        output = run.stdout + run.stderr
        assert output.count("compiled LogmelConformerModel.masked_pass for") == output.count("compiled contrastive_loss for") == 1, output[-3000:]
    assert sorted(uninterrupted) == list(range(1, 15))

    killed = str(tmp_path / "killed")
    os.makedirs(killed)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path = os.path.join(killed, "first.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command(corpus, killed, 14, extra), cwd=killed, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        # fairseq logs "Saved checkpoint" once checkpoint_last.pt is complete.
        while "Saved checkpoint" not in open(log_path).read() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = open(log_path).read()
    assert process.returncode == -signal.SIGKILL, first[-3000:]
    assert "done training" not in first, "the run finished before it was killed"

    resumed_at, epoch, iterations_in_epoch = checkpoint_position(os.path.join(killed, "checkpoints", "checkpoint_last.pt"))
    assert 4 <= resumed_at < 14 and iterations_in_epoch > 0, "checkpoint_last.pt is not a mid-epoch checkpoint"

    result = subprocess.run(command(corpus, killed, 14, extra), cwd=killed, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"(epoch {epoch} @ {resumed_at} updates)" in result.stdout, "did not resume from checkpoint_last.pt"
    resumed = logged_updates(result.stdout)
    assert sorted(resumed) == list(range(resumed_at + 1, 15))
    for update, values in resumed.items():
        assert values == uninterrupted[update], f"update {update}: resumed {values}, uninterrupted {uninterrupted[update]}"


def test_bf16_run_resumes_exactly_from_the_fp32_master_weights_in_its_checkpoint(corpus, tmp_path):
    """fairseq saves the bf16 weights; logmel_adamw (common.memory_efficient_bf16) adds its fp32 master weights to the
    optimizer state, so the run resumed at update 4 continues from them and logs what an uninterrupted run logs."""
    # The learning rate decays to zero at lr_scheduler.total_num_update, max_update unless set: both runs decay over 8.
    bf16 = ["common.bf16=true", "common.memory_efficient_bf16=true", "+lr_scheduler.total_num_update=8"]
    full = str(tmp_path / "full")
    os.makedirs(full)
    uninterrupted = logged_updates(hydra_train("pretrain_tiny", full, f"task.data={corpus}", "optimization.max_update=8", *bf16, *TRAINING).stdout)
    split = str(tmp_path / "split")
    os.makedirs(split)
    hydra_train("pretrain_tiny", split, f"task.data={corpus}", "optimization.max_update=4", *bf16, *TRAINING)
    state = torch.load(os.path.join(split, "checkpoints", "checkpoint_last.pt"), map_location="cpu", weights_only=False)
    assert {master.dtype for master in state["last_optimizer_state"]["fp32_master_weights"]} == {torch.float32}
    result = hydra_train("pretrain_tiny", split, f"task.data={corpus}", "optimization.max_update=8", *bf16, *TRAINING)
    assert "(epoch 1 @ 4 updates)" in result.stdout, "did not resume from checkpoint_last.pt"
    resumed = logged_updates(result.stdout)
    assert sorted(resumed) == [5, 6, 7, 8]
    for update, values in resumed.items():
        assert values == uninterrupted[update], f"update {update}: resumed {values}, uninterrupted {uninterrupted[update]}"


def cut_short(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_checkpoints_cut_short_are_reported_and_training_resumes_from_the_previous_intact_one(corpus, tmp_path):
    workdir = str(tmp_path)
    save_dir = os.path.join(workdir, "out", "checkpoints")
    script = os.path.join(REPO_ROOT, "run_scripts", "train_1gpu.sh")
    env = {"PATH": BIN_DIR + os.pathsep + os.environ.get("PATH", ""), "PYTHON": os.path.join(BIN_DIR, "python"), "CONFIG": "pretrain_tiny"}
    arguments = [script, corpus, os.path.join(workdir, "out"), "common.cpu=true", "common.log_format=json", "optimization.max_update=8"] + TRAINING
    first = logged_updates(run_cli(arguments, cwd=workdir, env=env).stdout)
    assert sorted(first) == list(range(1, 9))

    # A full disk during the save at update 8: every file that save wrote is cut short; the save at 4 survives.
    previous = os.path.join(save_dir, "checkpoint_1_4.pt")
    for name in os.listdir(save_dir):
        if name.endswith(".pt") and os.path.join(save_dir, name) != previous:
            cut_short(os.path.join(save_dir, name))

    last = os.path.join(save_dir, "checkpoint_last.pt")
    python = os.path.join(BIN_DIR, "python")
    check = subprocess.run([python, "-m", "fairseq_logmel_conformer.checkpoint", save_dir], capture_output=True, text=True)
    assert check.returncode == 1
    assert f"error: {last}: corrupt or cut short" in check.stderr, check.stderr
    assert "--fall-back" in check.stderr

    # Without the check, fairseq itself fails inside torch.load.
    direct = subprocess.run(command(corpus, os.path.join(workdir, "out"), 8), cwd=workdir, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert direct.returncode != 0

    resumed = run_cli(arguments, cwd=workdir, env=env)
    assert f"replaced by a copy of {previous}" in resumed.stderr
    assert os.path.isfile(last + ".corrupt")
    assert "(epoch 1 @ 4 updates)" in resumed.stdout, "did not resume from the previous intact checkpoint"
    again = logged_updates(resumed.stdout)
    assert sorted(again) == [5, 6, 7, 8]
    for update, values in again.items():
        assert values == first[update]

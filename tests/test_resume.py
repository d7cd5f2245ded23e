"""Interrupted training runs with the real fairseq-hydra-train on generated audio (CPU, fixed seed).

* SIGKILL after a mid-epoch checkpoint, then the same command again: the run
  resumes from checkpoint_last.pt and logs exactly the losses (and learning
  rates, accuracies, gradient norms) and validation metrics of an
  uninterrupted run from there on; for pre-training, and for fine-tuning
  (classification and tagging, with and without the consistency loss); and for
  pre-training with the step compiled (``model.compile``, with the ``aot_eager``
  backend: the same graphs as inductor's, without its code generation).
* Checkpoints cut short (a full disk during a save): rerunning the same
  command (``fairseq-hydra-train`` or a launch script) names the damaged file
  and resumes from the previous intact checkpoint; with none left it stops
  with that message.
"""
import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import BIN_DIR, REPO_ROOT, hydra_train, run_cli, tagging_corpus, write_labelled_corpus

# 64 one-second clips, 4 per batch: 16 updates per epoch, so every save (each 4 updates) of a run of
# 14 updates is mid-epoch, and a kill that comes late still leaves a mid-epoch checkpoint_last.pt.
TRAINING = [
    "dataset.max_tokens=64000",
    "dataset.required_batch_size_multiple=1",
    "checkpoint.save_interval_updates=4",
    "common.log_interval=1",
]
LOGGED = ("loss", "lr", "accuracy", "gnorm")
# Fine-tuning the tiny encoder from scratch on the same clips, 4 per batch: the saves (each 2 updates) of a run of
# 6 are mid-epoch, and each is preceded by a validation, whose clip-score meter the checkpoint then holds.
FINETUNING = [
    "model.pretrained_path=null",
    "+encoder=tiny",
    "dataset.batch_size=4",
    "dataset.num_workers=0",
    "checkpoint.save_interval_updates=2",
    "common.log_interval=1",
]
# What differs between two runs of the same command: speeds and clocks.
TIMING = {"wps", "ups", "wpb", "bsz", "wall", "train_wall", "gb_free"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_labelled_corpus(str(tmp_path_factory.mktemp("resume_corpus")), num_train=64, num_valid=4, seconds=(1.0, 1.0), seed=5)


def command(config: str, workdir: str, *overrides: str):
    return [
        os.path.join(BIN_DIR, "fairseq-hydra-train"), "--config-name", config, "common.cpu=true", "common.log_format=json",
        f"checkpoint.save_dir={workdir}/checkpoints", f"hydra.run.dir={workdir}/run", *overrides,
    ]


# One block with a short kernel keeps the compiled variant's tracing short; the eager run keeps pretrain_tiny.
COMPILED = ["model.compile=true", "model.compile_mode=aot_eager", "model.encoder_layers=1", "model.first_kernel_size=3"]


def logged_updates(log: str):
    """{num_updates: {loss, lr, accuracy, gnorm}} from fairseq's per-update json log lines."""
    updates = {}
    for line in log.splitlines():
        if "[train_inner]" in line:
            record = json.loads(line.split(" - ", 1)[1])
            updates[int(record["num_updates"])] = {key: record[key] for key in LOGGED}
    return updates


def logged_records(log: str):
    """{(kind, num_updates): record} of fairseq's per-update ("train_inner") and validation ("valid") json log
    lines, without the speeds and clocks."""
    records = {}
    for line in log.splitlines():
        for kind in ("train_inner", "valid"):
            if f"[{kind}]" in line:
                record = json.loads(line.split(" - ", 1)[1])
                prefix = "valid_" if kind == "valid" else ""
                records[kind, int(record[prefix + "num_updates"])] = {
                    key: value for key, value in record.items() if key[len(prefix):] not in TIMING
                }
    return records


def checkpoint_position(path: str):
    state = torch.load(path, map_location="cpu", weights_only=False)
    iterator = state["extra_state"]["train_iterator"]
    return state["optimizer_history"][-1]["num_updates"], iterator["epoch"], iterator["iterations_in_epoch"]


def kill_after_a_mid_epoch_checkpoint_and_rerun(arguments, workdir: str, max_update: int):
    """Run ``arguments`` in ``workdir``, SIGKILL it once it has saved a checkpoint, check checkpoint_last.pt is
    mid-epoch, run the same command again; return the update it resumed after and the second run's output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    log_path = os.path.join(workdir, "first.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(arguments, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        # fairseq logs "Saved checkpoint" once checkpoint_last.pt is complete.
        while "Saved checkpoint" not in open(log_path).read() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
    first = open(log_path).read()
    assert process.returncode == -signal.SIGKILL, first[-3000:]
    assert "done training" not in first, "the run finished before it was killed"

    resumed_at, epoch, iterations_in_epoch = checkpoint_position(os.path.join(workdir, "checkpoints", "checkpoint_last.pt"))
    assert 0 < resumed_at < max_update and iterations_in_epoch > 0, "checkpoint_last.pt is not a mid-epoch checkpoint"

    result = subprocess.run(arguments, cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"(epoch {epoch} @ {resumed_at} updates)" in result.stdout, "did not resume from checkpoint_last.pt"
    return resumed_at, result.stdout


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
    arguments = command("pretrain_tiny", killed, f"task.data={corpus}", "optimization.max_update=14", *TRAINING, *extra)
    resumed_at, log = kill_after_a_mid_epoch_checkpoint_and_rerun(arguments, killed, 14)
    assert resumed_at >= 4
    resumed = logged_updates(log)
    assert sorted(resumed) == list(range(resumed_at + 1, 15))
    for update, values in resumed.items():
        assert values == uninterrupted[update], f"update {update}: resumed {values}, uninterrupted {uninterrupted[update]}"


# Classification with the consistency loss, tagging without: each task and each criterion path once (16 s a case).
@pytest.mark.parametrize(
    "config, multilabel, consistency_weight", [("finetune_esc50", False, 2.0), ("finetune_audioset_balanced", True, 0.0)]
)
def test_finetuning_killed_after_a_mid_epoch_checkpoint_resumes_with_the_same_losses_and_metrics(
    corpus, tmp_path, config, multilabel, consistency_weight
):
    """The checkpoint of a fine-tuning run holds the validation's clip-score meter, which the rerun restores."""
    data = tagging_corpus(corpus, tmp_path) if multilabel else corpus
    overrides = [f"task.data={data}", "optimization.max_update=6", f"criterion.consistency_weight={consistency_weight}", *FINETUNING]
    full = str(tmp_path / "full")
    os.makedirs(full)
    uninterrupted = logged_records(hydra_train(config, full, *overrides).stdout)
    metric = "valid_mAP" if multilabel else "valid_accuracy"
    assert [update for kind, update in sorted(uninterrupted) if kind == "valid"] == [2, 4, 6]
    assert all(metric in uninterrupted["valid", update] for update in (2, 4, 6))

    killed = str(tmp_path / "killed")
    os.makedirs(killed)
    resumed_at, log = kill_after_a_mid_epoch_checkpoint_and_rerun(command(config, killed, *overrides), killed, 6)
    resumed = logged_records(log)
    assert sorted(resumed) == sorted(key for key in uninterrupted if key[1] > resumed_at)
    for key, values in resumed.items():
        assert values == uninterrupted[key], f"{key}: resumed {values}, uninterrupted {uninterrupted[key]}"


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
    assert check.returncode == 0 and f"warning: {last}: corrupt or cut short" in check.stderr, check.stderr
    assert f"training resumes from {previous}" in check.stdout

    # The same fairseq-hydra-train command resumes from the intact checkpoint, naming the damaged one.
    resumed = run_cli(command("pretrain_tiny", os.path.join(workdir, "out"), f"task.data={corpus}", "optimization.max_update=8", *TRAINING), cwd=workdir)
    assert f"{last}: corrupt or cut short" in resumed.stdout + resumed.stderr
    assert f"resuming from {previous}, the newest intact checkpoint" in resumed.stdout + resumed.stderr
    assert "(epoch 1 @ 4 updates)" in resumed.stdout, "did not resume from the previous intact checkpoint"
    again = logged_updates(resumed.stdout)
    assert sorted(again) == [5, 6, 7, 8]
    for update, values in again.items():
        assert values == first[update]

    # With no intact checkpoint left the launch script stops with the message naming the file, and no traceback.
    for name in os.listdir(save_dir):
        if name.endswith(".pt"):
            cut_short(os.path.join(save_dir, name))
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
    stopped = subprocess.run(arguments, cwd=workdir, capture_output=True, text=True, env=full_env, timeout=600)
    assert stopped.returncode != 0
    assert f"{last}: corrupt or cut short" in stopped.stderr and f"holds no intact checkpoint to resume from. Remove {last}" in stopped.stderr

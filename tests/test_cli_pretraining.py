"""End to end: manifests from a folder, the real fairseq-hydra-train, and loading in a fresh process."""
import json
import os
import subprocess
import sys

import torch

from conftest import BIN_DIR, REPO_ROOT, hydra_train, run_cli

from fairseq_logmel_conformer.data.synthetic import write_dataset

LOAD_AND_EMBED = """
import sys, json, torch
import fairseq_logmel_conformer
from fairseq import checkpoint_utils
from fairseq_logmel_conformer.models.logmel_conformer import masked_mean
models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([sys.argv[1]])
model = models[0].eval()
source = torch.randn(2, 24000)
padding_mask = torch.zeros(2, 24000, dtype=torch.bool)
padding_mask[1, 12000:] = True
features, step_padding = model.extract_features(source, padding_mask)
clips = masked_mean(features, step_padding)
print(json.dumps({"model": type(model).__name__, "task": type(task).__name__, "features": list(features.shape),
                  "valid_steps": (~step_padding).sum(1).tolist(), "clip": list(clips.shape),
                  "finite": bool(torch.isfinite(features).all())}))
"""


def read_json_logs(log_path, tag):
    with open(log_path) as f:
        return [json.loads(line.split(" - ", 1)[1]) for line in f if f"][{tag}][" in line]


def test_manifest_tool_reports_unreadable_files(tmp_path):
    write_dataset(str(tmp_path / "audio"), num_clips=6, seconds=(0.5, 1.0))
    (tmp_path / "audio" / "broken.wav").write_bytes(b"not audio at all")
    result = run_cli(["logmel-manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "m"), "--valid-percent", "0.5", "--jobs", "2"], cwd=str(tmp_path))
    assert "1 unreadable" in result.stdout
    listed = [line.split("\t")[0] for name in ("train", "valid") for line in (tmp_path / "m" / f"{name}.tsv").read_text().splitlines()[1:]]
    assert len(listed) == 6 and "broken.wav" not in listed
    assert "broken.wav" in (tmp_path / "m" / "unreadable.txt").read_text()
    assert "tensorboardX" not in result.stdout + result.stderr


def test_console_scripts_do_not_advise_installing_tensorboardx(tmp_path):
    """fairseq logs "Please install tensorboardX" as it imports its text-to-speech task; nothing here uses it."""
    result = run_cli(["logmel-manifest", "--help"], cwd=str(tmp_path))
    assert "usage: logmel-manifest" in result.stdout
    assert "tensorboardX" not in result.stdout + result.stderr


def test_pretrain_tiny_then_load_in_a_fresh_process(pretrained_checkpoint):
    workdir = os.path.dirname(os.path.dirname(pretrained_checkpoint))
    train_logs = read_json_logs(os.path.join(workdir, "run", "hydra_train.log"), "train_inner")
    assert [log["num_updates"] for log in train_logs][-1] == "6"
    assert all(float(log["loss"]) > 0 and 0 <= float(log["accuracy"]) <= 1 for log in train_logs)
    result = subprocess.run([sys.executable, "-c", LOAD_AND_EMBED, pretrained_checkpoint], capture_output=True, text=True, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["model"] == "LogmelConformerModel" and out["task"] == "LogmelPretrainingTask"
    assert out["features"] == [2, 19, 64] and out["valid_steps"] == [19, 9] and out["clip"] == [2, 64] and out["finite"]


def test_classic_config_dir_and_user_dir_route(tmp_path, pretrained_checkpoint):
    manifest = os.path.join(os.path.dirname(os.path.dirname(pretrained_checkpoint)), "manifest")
    package_dir = os.path.join(REPO_ROOT, "fairseq_logmel_conformer")
    hydra_train(
        "pretrain_tiny", str(tmp_path), f"task.data={manifest}", "optimization.max_update=2", "criterion.cross_clip_distractors=5",
        f"common.user_dir={package_dir}", config_dir=os.path.join(package_dir, "config", "pretraining"),
    )
    state = __import__("torch").load(tmp_path / "checkpoints" / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["common"]["user_dir"] == package_dir
    assert state["cfg"]["model"]["_name"] == "logmel_conformer" and state["cfg"]["criterion"]["_name"] == "logmel_contrastive"
    assert state["cfg"]["criterion"]["cross_clip_distractors"] == 5


def test_fairseq_train_with_user_dir_and_flags(tmp_path, pretrained_checkpoint):
    manifest = os.path.join(os.path.dirname(os.path.dirname(pretrained_checkpoint)), "manifest")
    run_cli(
        [
            "fairseq-train", manifest, "--user-dir", os.path.join(REPO_ROOT, "fairseq_logmel_conformer"),
            "--task", "logmel_pretraining", "--arch", "logmel_conformer", "--criterion", "logmel_contrastive",
            "--encoder-dim", "64", "--encoder-layers", "2", "--encoder-heads", "4", "--encoder-ffn-dim", "128",
            "--optimizer", "logmel_adamw", "--adam-betas", "(0.9, 0.98)", "--lr", "0.0005", "--max-update", "2", "--max-tokens", "96000",
            "--max-sample-size", "48000", "--required-batch-size-multiple", "1", "--cpu", "--save-dir", str(tmp_path / "ckpt"),
        ],
        cwd=str(tmp_path),
    )
    state = __import__("torch").load(tmp_path / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"]["encoder_dim"] == 64 and state["cfg"]["model"]["sample_rate"] == 16000
    assert state["cfg"]["optimizer"]["_name"] == "logmel_adamw" and list(state["cfg"]["optimizer"]["adam_betas"]) == [0.9, 0.98]


def test_memory_efficient_bf16_trains_like_fairseqs_bf16_optimizer(tmp_path, pretrained_checkpoint):
    """``common.memory_efficient_bf16`` hands logmel_adamw the bf16 weights; it must log and save what fairseq's
    FP16Optimizer (``common.bf16`` alone, one fp32 copy per parameter) does, update for update."""
    manifest = os.path.join(os.path.dirname(os.path.dirname(pretrained_checkpoint)), "manifest")
    runs = {}
    for name, flags in (("fairseq", []), ("ours", ["common.memory_efficient_bf16=true"])):
        workdir = tmp_path / name
        workdir.mkdir()
        hydra_train("pretrain_tiny", str(workdir), f"task.data={manifest}", "optimization.max_update=4", "common.log_interval=1",
                    "common.bf16=true", *flags)
        logs = read_json_logs(os.path.join(workdir, "run", "hydra_train.log"), "train_inner")
        state = torch.load(workdir / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
        runs[name] = [(log["loss"], log["gnorm"]) for log in logs], state["model"]
    assert len(runs["ours"][0]) == 4 and runs["ours"][0] == runs["fairseq"][0]
    for key, weight in runs["ours"][1].items():
        assert torch.equal(weight, runs["fairseq"][1][key]), key


def test_a_misspelt_config_name_says_no_such_config_and_lists_the_shipped_ones(tmp_path):
    """fairseq-hydra-train would compose fairseq's bare defaults under an unknown name and fail on task.data."""
    result = subprocess.run(
        [os.path.join(BIN_DIR, "fairseq-hydra-train"), "--config-name", "finetune_esc5O", "common.cpu=true", "task.data=/nonexistent"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode != 0
    assert "--config-name finetune_esc5O: no config of that name exists (did you mean finetune_esc50?)" in result.stderr, result.stderr[-3000:]
    shipped = result.stderr.split("Configs shipped with fairseq_logmel_conformer: ", 1)[1].split(".\n", 1)[0].split(", ")
    assert {"pretrain_tiny", "pretrain_cfS", "finetune_esc50", "finetune_audioset_balanced"} <= set(shipped)
    assert "not in struct" not in result.stderr


def test_composing_a_config_from_a_program_with_its_own_arguments_prints_nothing(tmp_path):
    """The config-name check parses the command line as fairseq-hydra-train's; another program's arguments are not an error."""
    script = (
        "import os\n"
        "from hydra import compose, initialize_config_dir\n"
        "from fairseq_logmel_conformer import CONFIG_DIR\n"
        "with initialize_config_dir(config_dir=os.path.join(CONFIG_DIR, 'pretraining'), version_base=None):\n"
        "    print(compose(config_name='pretrain_tiny', overrides=['task.data=x']).task.data)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "--sections", "loader", "--workers", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout == "x\n", result.stderr
    assert "usage" not in result.stderr and "unrecognized arguments" not in result.stderr, result.stderr

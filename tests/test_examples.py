"""The examples/ scripts and the example user plugin, run as a user would, on generated audio."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import BIN_DIR, REPO_ROOT, hydra_train, load_script
from fairseq import utils

from fairseq_logmel_conformer.data.synthetic import synthesize, write_dataset

EXAMPLES = os.path.join(REPO_ROOT, "examples")
PLUGIN = os.path.join(EXAMPLES, "new_task_plugin")
CALL_TYPES = ["song", "alarm", "contact", "no_call"]
FAST = ["optimization.max_update=4", "dataset.batch_size=4", "dataset.num_workers=0", "common.log_interval=1"]


def run_script(script, *args, cwd, env=None):
    """``bash examples/SCRIPT ARGS`` with this venv's console scripts first on PATH; fail the test with its output on error."""
    full_env = dict(os.environ, PATH=BIN_DIR + os.pathsep + os.environ["PATH"], PYTHON=sys.executable, OMP_NUM_THREADS="1", **(env or {}))
    result = subprocess.run(["bash", os.path.join(EXAMPLES, script), *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=full_env)
    if result.returncode != 0:
        pytest.fail(f"{script} exited with {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def valid_logs(run_dir):
    with open(os.path.join(run_dir, "hydra_train.log")) as f:
        return [json.loads(line.split(" - ", 1)[1]) for line in f if "][valid][" in line]


def load_plugin():
    """Import the example plugin as fairseq-hydra-train does for ``common.user_dir``; return its task module."""
    utils.import_user_module(argparse.Namespace(user_dir=os.path.join(PLUGIN, "my_bird_plugin")))
    from my_bird_plugin.tasks import bird_calls

    return bird_calls


@pytest.fixture(scope="module")
def call_types_data(tmp_path_factory):
    """The plugin's demo data (16 clips), written by its make_demo_data.py in this process."""
    folder = str(tmp_path_factory.mktemp("calls"))
    make_demo_data = load_script(os.path.join(PLUGIN, "make_demo_data.py"))
    make_demo_data.main([folder, "--clips", "16"])
    return folder


def test_make_demo_data_writes_the_call_type_label_format(call_types_data):
    with open(os.path.join(call_types_data, "call_types.txt")) as f:
        assert f.read().split() == CALL_TYPES
    assert not os.path.exists(os.path.join(call_types_data, "labels.txt")), "the plugin's vocabulary has its own name"
    with open(os.path.join(call_types_data, "valid.labels")) as f:
        assert sorted(f.read().split()) == sorted(CALL_TYPES), "one round of every call type is held out"
    with open(os.path.join(call_types_data, "train.tsv")) as f:
        assert len(f.read().splitlines()) == 1 + 12


def test_plugin_task_reads_its_vocabulary_and_switches_label_mode(call_types_data, tmp_path):
    bird_calls = load_plugin()
    single = bird_calls.BirdCallsTask.setup_task(bird_calls.BirdCallsConfig(data=call_types_data, seed=1, train_subset="train"))
    assert not single.multilabel and single.vocabulary.names == CALL_TYPES
    single.load_dataset("valid")
    assert single.dataset("valid").collater([single.dataset("valid")[0]])["target"].shape == (1, 4)

    # Two birds calling at once: only the multi-label mode accepts a clip with two call types.
    with open(os.path.join(call_types_data, "valid.labels")) as f:
        lines = f.read().splitlines()
    folder = tmp_path / "overlapping"
    folder.mkdir()
    for name in ("valid.tsv", "call_types.txt"):
        shutil.copy(os.path.join(call_types_data, name), folder)
    (folder / "valid.labels").write_text("\n".join(["song,alarm"] + lines[1:]) + "\n")
    multi = bird_calls.BirdCallsTask.setup_task(bird_calls.BirdCallsConfig(data=str(folder), seed=1, train_subset="train", multilabel=True))
    multi.load_dataset("valid")
    dataset = multi.dataset("valid")
    targets = dataset.collater([dataset[i] for i in range(len(dataset))])["target"]
    assert targets.sum().item() == len(lines) + 1
    single_on_overlap = bird_calls.BirdCallsTask.setup_task(bird_calls.BirdCallsConfig(data=str(folder), seed=1, train_subset="train"))
    with pytest.raises(ValueError, match="exactly one label"):
        single_on_overlap.load_dataset("valid")


def test_plugin_trains_with_fairseq_hydra_train_and_evaluates(call_types_data, tmp_path):
    """The README's commands: the user's task, multi-label by override, with the package's model and criterion."""
    workdir = str(tmp_path)
    hydra_train(
        "bird_calls", workdir, f"task.data={call_types_data}", f"common.user_dir={PLUGIN}/my_bird_plugin",
        "model.pretrained_path=null", "+encoder=tiny", "task.multilabel=true", *FAST, config_dir=os.path.join(PLUGIN, "config"),
    )
    state = torch.load(f"{workdir}/checkpoints/checkpoint_best.pt", weights_only=False)
    cfg = state["cfg"]
    assert cfg["task"]["_name"] == "my_bird_calls" and cfg["task"]["labels"] == "call_types.txt"
    assert (cfg["model"]["_name"], cfg["criterion"]["_name"]) == ("logmel_conformer_classifier", "logmel_consistency")
    assert cfg["model"]["class_names"] == CALL_TYPES and cfg["model"]["multilabel"], "the task's multilabel field reaches the model"
    assert state["model"]["head.weight"].shape == (4, 64)
    logs = valid_logs(f"{workdir}/run")
    assert logs and {"valid_mAP", "valid_lwlrap", "valid_mAUC"} <= set(logs[-1]) and "valid_accuracy" not in logs[-1]
    assert "valid_best_mAP" in logs[-1], "the recipe picks the best checkpoint by mAP"

    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "logmel-evaluate"), f"{workdir}/checkpoints/checkpoint_best.pt", "--out", f"{workdir}/eval",
         "--batch-size", "4", "--user-dir", os.path.join(PLUGIN, "my_bird_plugin")],
        cwd=workdir, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    with open(f"{workdir}/eval/metrics.json") as f:
        written = json.load(f)
    assert written["num_clips"] == 4 and written["multilabel"]
    assert written["metrics"]["mAP"] == pytest.approx(max(float(log["valid_mAP"]) for log in logs), abs=1e-4)

    # Every command that loads a checkpoint takes the plugin with fairseq's --user-dir; without it, one line says so.
    checkpoint, clip = f"{workdir}/checkpoints/checkpoint_best.pt", os.path.join(call_types_data, "valid.tsv")
    plugin = ["--user-dir", os.path.join(PLUGIN, "my_bird_plugin")]
    commands = {
        "logmel-tag": [checkpoint, clip],
        "logmel-embed": [checkpoint, clip, "--out", f"{workdir}/embeddings"],
        "logmel-export": [checkpoint, "--torchscript", f"{workdir}/encoder.pt"],
        "logmel-evaluate": [checkpoint, "--out", f"{workdir}/eval2"],
    }
    for command, arguments in commands.items():
        without = subprocess.run([os.path.join(BIN_DIR, command), *arguments], cwd=workdir, capture_output=True, text=True, timeout=600,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert without.returncode == 1 and "Traceback" not in without.stderr, without.stderr[-3000:]
        assert (f"error: {checkpoint}: its task 'my_bird_calls' is not registered: pass --user-dir with the plugin folder that defines it "
                f"(it was trained with common.user_dir={PLUGIN}/my_bird_plugin)") in without.stderr, without.stderr[-3000:]
        if command != "logmel-evaluate":  # run above with --user-dir
            run = subprocess.run([os.path.join(BIN_DIR, command), *arguments, *plugin], cwd=workdir, capture_output=True, text=True, timeout=600,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
            assert run.returncode == 0, run.stderr[-3000:]
    assert len([name for name in os.listdir(f"{workdir}/embeddings") if name.endswith(".npy")]) == 4, "one per valid clip"
    assert os.path.getsize(f"{workdir}/encoder.pt") > 0


def test_example_scripts_parse_and_print_usage(tmp_path):
    for script in ("pretrain_own_audio.sh", "finetune_esc50.sh"):
        subprocess.run(["bash", "-n", os.path.join(EXAMPLES, script)], check=True)
        result = subprocess.run(["bash", os.path.join(EXAMPLES, script)], cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith(f"usage: {script}")


def test_pretrain_own_audio_builds_manifests_trains_and_prints_the_checkpoint(tmp_path):
    write_dataset(str(tmp_path / "my audio" / "field"), num_clips=8, seconds=(1.0, 2.0), seed=3)
    result = run_script(
        "pretrain_own_audio.sh", "my audio", "out", "pretrain_tiny", "common.cpu=true", "optimization.max_update=3",
        cwd=tmp_path, env={"VALID_PERCENT": "0.25"},
    )
    checkpoint = re.search(r"^pre-trained checkpoint: (.+)$", result.stdout, re.M).group(1)
    assert checkpoint == str(tmp_path / "out" / "checkpoints" / "checkpoint_best.pt")
    for split, clips in (("train", 6), ("valid", 2)):
        with open(tmp_path / "out" / "manifests" / f"{split}.tsv") as f:
            assert len(f.read().splitlines()) == 1 + clips
    state = torch.load(checkpoint, weights_only=False)
    assert state["cfg"]["task"]["data"] == str(tmp_path / "out" / "manifests")
    assert state["cfg"]["model"]["encoder_dim"] == 64, "the CONFIG argument picked pretrain_tiny"
    last = torch.load(tmp_path / "out" / "checkpoints" / "checkpoint_last.pt", weights_only=False)
    assert last["optimizer_history"][-1]["num_updates"] == 3, "trailing overrides reach fairseq-hydra-train"


def write_mini_esc50(folder, categories=("tone", "chirp")):
    """ESC-50's layout with one 1 s clip per category and fold: audio/F-SRC-TAKE-TARGET.wav and meta/esc50.csv."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(folder, "audio"))
    os.makedirs(os.path.join(folder, "meta"))
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category in enumerate(categories):
            source = 100000 + 10 * fold + target
            name = f"{fold}-{source}-A-{target}.wav"
            sf.write(os.path.join(folder, "audio", name), synthesize(category, 16000, 16000, rng), 16000)
            rows.append(f"{name},{fold},{target},{category},False,{source},A")
    with open(os.path.join(folder, "meta", "esc50.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")


def test_finetune_esc50_prepares_folds_trains_evaluates_and_averages(tmp_path):
    write_mini_esc50(str(tmp_path / "ESC-50"))
    # Fold 1 counts as done (a rerun after an interruption): only fold 2 is trained, and the mean covers both.
    done = tmp_path / "out" / "fold1" / "eval"
    done.mkdir(parents=True)
    (done / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": 1.0}}))
    result = run_script("finetune_esc50.sh", "ESC-50", "scratch", "out", "1,2", "common.cpu=true", *FAST, cwd=tmp_path, env={"ENCODER": "tiny"})

    with open(tmp_path / "out" / "manifests" / "fold2" / "valid.tsv") as f:
        assert [line.split("\t")[0] for line in f.read().splitlines()[1:]] == ["2-100020-A-0.wav", "2-100021-A-1.wav"]
    assert not (tmp_path / "out" / "fold1" / "checkpoints").exists()
    state = torch.load(tmp_path / "out" / "fold2" / "checkpoints" / "checkpoint_best.pt", weights_only=False)
    assert state["cfg"]["task"]["_name"] == "logmel_audio_classification"
    assert state["cfg"]["model"]["class_names"] == ["tone", "chirp"] and state["cfg"]["model"]["encoder"]["encoder_dim"] == 64
    with open(tmp_path / "out" / "fold2" / "eval" / "metrics.json") as f:
        fold2 = json.load(f)
    assert fold2["num_clips"] == 2
    mean = float(re.search(r"mean accuracy over 2 fold\(s\): ([0-9.]+)", result.stdout).group(1))
    assert mean == pytest.approx((1.0 + fold2["metrics"]["accuracy"]) / 2, abs=1e-4)

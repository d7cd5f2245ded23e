"""End to end: fine-tune through the real fairseq-hydra-train, then evaluate with logmel-evaluate."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import hydra_train, run_cli, tagging_corpus

from fairseq_logmel_conformer.data.synthetic import SOUND_CLASSES


def evaluate(checkpoint, out_dir, workdir):
    result = run_cli(["logmel-evaluate", checkpoint, "--split", "valid", "--out", out_dir, "--batch-size", "4"], cwd=workdir)
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return json.loads(result.stdout[result.stdout.index("{"):]), json.load(f)


def valid_logs(workdir):
    with open(os.path.join(workdir, "run", "hydra_train.log")) as f:
        return [json.loads(line.split(" - ", 1)[1]) for line in f if "][valid][" in line]


FAST = ["optimization.max_update=6", "dataset.batch_size=4", "dataset.num_workers=0", "common.log_interval=1"]


def test_finetune_single_label_from_pretrained_then_evaluate(tmp_path, labelled_corpus, pretrained_checkpoint):
    workdir = str(tmp_path)
    hydra_train("finetune_esc50", workdir, f"task.data={labelled_corpus}", f"model.pretrained_path={pretrained_checkpoint}", *FAST)
    logs = valid_logs(workdir)
    assert logs and {"valid_accuracy", "valid_top5", "valid_mAP"} <= set(logs[-1])
    printed, written = evaluate(f"{workdir}/checkpoints/checkpoint_best.pt", f"{workdir}/eval", workdir)
    assert printed["num_clips"] == written["num_clips"] == 10, "every valid clip is evaluated"
    assert written["num_classes"] == 5 and 0 <= written["metrics"]["accuracy"] <= 1
    assert written["metrics"]["top5"] == 1.0, "with 5 classes the true class is always in the top 5"
    best = max(float(log["valid_accuracy"]) for log in logs)
    assert written["metrics"]["accuracy"] == pytest.approx(best, abs=1e-4), "the evaluation command agrees with fairseq's validation"
    assert os.path.isfile(f"{workdir}/eval/confusion_matrix.png") and os.path.isfile(f"{workdir}/eval/per_class.csv")


def test_finetune_in_bf16_validates_and_evaluates(tmp_path, labelled_corpus, pretrained_checkpoint):
    """fairseq's bf16 path casts every float tensor of a sample, the 0/1 targets too, which numpy cannot take."""
    workdir = str(tmp_path)
    hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", f"model.pretrained_path={pretrained_checkpoint}", "common.bf16=true", *FAST,
    )
    logs = valid_logs(workdir)
    assert logs and 0 <= float(logs[-1]["valid_accuracy"]) <= 100
    _, written = evaluate(f"{workdir}/checkpoints/checkpoint_last.pt", f"{workdir}/eval", workdir)
    assert written["num_clips"] == 10 and 0 <= written["metrics"]["accuracy"] <= 1


def test_a_frozen_encoder_stays_as_loaded_in_memory_efficient_bf16(tmp_path, labelled_corpus, pretrained_checkpoint):
    """The frozen encoder has no gradients. Under common.bf16 alone, fairseq's optimizer steps such parameters on
    zero gradients, and weight decay moves them; logmel_adamw's own master weights leave them alone, as fp32 does.

    A weight decay of 200 (at the peak rate of 5e-5, 1% per update) shows in bf16 weights within six updates."""
    workdir = str(tmp_path)
    hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", f"model.pretrained_path={pretrained_checkpoint}", "common.bf16=true",
        "common.memory_efficient_bf16=true", "model.freeze_encoder_updates=6", "model.reinit_last_blocks=0", "optimizer.weight_decay=200", *FAST,
    )
    pretrained = torch.load(pretrained_checkpoint, map_location="cpu", weights_only=False)["model"]
    finetuned = torch.load(f"{workdir}/checkpoints/checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    # Batch norm's running statistics are buffers, updated in training mode whether or not the weights are frozen.
    encoder = [key for key in finetuned if key.startswith("encoder.") and ".batch_norm.running_" not in key and not key.endswith("num_batches_tracked")]
    assert len(encoder) > 50
    for key in encoder:
        assert torch.equal(finetuned[key], pretrained[key[len("encoder."):]].to(torch.bfloat16).float()), key


def test_finetune_multi_label_linear_softmax_then_evaluate(tmp_path, labelled_corpus, pretrained_checkpoint):
    workdir = str(tmp_path)
    data = tagging_corpus(labelled_corpus, tmp_path)
    hydra_train("finetune_audioset_balanced", workdir, f"task.data={data}", f"model.pretrained_path={pretrained_checkpoint}", "task.class_balanced_sampling=true", *FAST)
    logs = valid_logs(workdir)
    assert {"valid_mAP", "valid_mAUC", "valid_d_prime", "valid_lwlrap"} <= set(logs[-1])
    _, written = evaluate(f"{workdir}/checkpoints/checkpoint_best.pt", f"{workdir}/eval", workdir)
    assert written["num_clips"] == 10 and written["multilabel"]
    assert written["metrics"]["mAP"] == pytest.approx(max(float(log["valid_mAP"]) for log in logs), abs=1e-4)
    assert os.path.isfile(f"{workdir}/eval/per_class_ap.png")


def test_finetune_from_scratch_and_reload_without_the_data(tmp_path, labelled_corpus):
    """The scratch baseline needs no pre-trained checkpoint, takes encoder settings from the command line,
    and the fine-tuned checkpoint reloads on its own with them."""
    workdir = str(tmp_path)
    hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", "model.pretrained_path=null", "+encoder=tiny",
        "model.encoder.feature_norm=layer", *FAST,
    )
    import torch

    import fairseq_logmel_conformer  # noqa: F401
    from fairseq import checkpoint_utils

    state = torch.load(f"{workdir}/checkpoints/checkpoint_last.pt", weights_only=False)
    assert state["cfg"]["model"]["encoder"]["encoder_dim"] == 64
    assert state["cfg"]["model"]["encoder"]["feature_norm"] == "layer"
    # Fields encoder/tiny.yaml does not list are saved too, so a default changed later cannot change how it loads.
    from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig

    defaults = LogmelConformerConfig()
    for name in ("mask_prob", "mask_length", "logmel_mean", "logmel_std", "stack_frames", "win_ms", "dropout"):
        assert state["cfg"]["model"]["encoder"][name] == getattr(defaults, name), name
    assert "encoder.feature_encoder.layer_norm.weight" in state["model"]
    assert state["cfg"]["model"]["class_names"] == list(SOUND_CLASSES)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([f"{workdir}/checkpoints/checkpoint_last.pt"], arg_overrides={"data": "/nonexistent"})
    probs = models[0].eval().predict(torch.randn(3, 16000))
    assert probs.shape == (3, 5)
    np.testing.assert_allclose(probs.sum(-1).numpy(), 1.0, rtol=1e-5)


def test_finetune_loads_the_pretrained_encoder_keeps_its_config_can_freeze_it_and_restart_its_last_blocks(tmp_path, labelled_corpus, pretrained_checkpoint):
    workdir = str(tmp_path)
    hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", f"model.pretrained_path={pretrained_checkpoint}",
        "model.freeze_encoder_updates=100", "model.reinit_last_blocks=1",
        "optimization.max_update=4", "dataset.batch_size=4", "dataset.num_workers=0",
    )
    import torch

    pretrained = torch.load(pretrained_checkpoint, weights_only=False)
    finetuned = torch.load(f"{workdir}/checkpoints/checkpoint_last.pt", weights_only=False)
    assert finetuned["cfg"]["model"]["encoder"] == pretrained["cfg"]["model"]
    # Frozen for the first 100 updates: after 4, the encoder's weights are exactly the pre-trained ones,
    # but for the last of pretrain_tiny's two blocks, which model.reinit_last_blocks=1 restarts from random weights.
    for key in ("context_encoder.layers.0.ffn1.sequential.1.weight", "feature_encoder.proj.weight", "context_encoder.proj_in.bias"):
        torch.testing.assert_close(finetuned["model"][f"encoder.{key}"], pretrained["model"][key], rtol=0, atol=0)
    restarted = "context_encoder.layers.1.ffn1.sequential.1.weight"
    assert not torch.allclose(finetuned["model"][f"encoder.{restarted}"], pretrained["model"][restarted], atol=1e-3)
    assert finetuned["model"]["head.weight"].shape == (5, 64)


@pytest.mark.parametrize("max_update", [1, 2])
def test_finetune_runs_for_any_positive_max_update(tmp_path, labelled_corpus, max_update):
    """The 30/30/40% schedule rounds to no warm-up, no hold and one update of decay: the first update runs at the peak
    rate, and the rate fairseq logs after each update is the final one."""
    workdir = str(tmp_path)
    result = hydra_train(
        "finetune_esc50", workdir, f"task.data={labelled_corpus}", "model.pretrained_path=null", "+encoder=tiny",
        f"optimization.max_update={max_update}", "dataset.batch_size=4", "dataset.num_workers=0", "common.log_interval=1",
    )
    logged = [json.loads(line.split(" - ", 1)[1]) for line in result.stdout.splitlines() if "[train_inner]" in line]
    assert [int(log["num_updates"]) for log in logged] == list(range(1, max_update + 1))
    assert [float(log["lr"]) for log in logged] == [pytest.approx(1e-4 * 0.05)] * max_update
    state = torch.load(f"{workdir}/checkpoints/checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == max_update

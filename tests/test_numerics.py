"""Numerics on silent and clipped audio, and the report of a non-finite loss.

What runs here (CPU): the frontend's fp32 STFT under bf16 autocast, a bf16-autocast training step on silent
and clipped clips, fairseq's fp16 path with dynamic loss scaling (memory_efficient_fp16, the variant that
runs without CUDA) through fairseq-hydra-train, and the NaN-loss report. What needs a GPU: fairseq's default
fp16 optimizer (fp32 master weights, common.fp16 without memory_efficient_fp16), AMP (common.amp), and the
fp16 kernels of CUDA (attention, layer norm, convolution) themselves.
"""
import json
import logging
import os
import subprocess

import numpy as np
import soundfile as sf
import torch
from fairseq.nan_detector import NanDetector

from conftest import BIN_DIR, hydra_train
from fairseq_logmel_conformer.criterions.batch_checks import report_nonfinite_loss, under_nan_detector
from fairseq_logmel_conformer.criterions.logmel_contrastive import LogmelContrastiveConfig, LogmelContrastiveCriterion
from fairseq_logmel_conformer.data.synthetic import write_dataset
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig, LogmelConformerModel
from fairseq_logmel_conformer.modules.frontend import LOG_FLOOR, LogmelFrontend

RATE = 16000
FP16_MAX = torch.finfo(torch.float16).max



def silent_and_clipped(num_samples: int = 2 * RATE) -> torch.Tensor:
    """(4, S): digital silence, a full-scale clipped square wave, a hot float clip at +-4, and noise."""
    t = torch.arange(num_samples) / RATE
    square = torch.sign(torch.sin(2 * torch.pi * 440 * t))
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(num_samples).astype(np.float32)) * 0.1
    return torch.stack([torch.zeros(num_samples), square, 4 * square, noise])


def tiny_model() -> LogmelConformerModel:
    torch.manual_seed(0)
    config = LogmelConformerConfig(
        sample_rate=RATE, encoder_dim=64, encoder_layers=2, encoder_heads=4, encoder_ffn_dim=128, first_kernel_size=15, kernel_size=7
    )
    return LogmelConformerModel(config)


def batch(source: torch.Tensor, names=None) -> dict:
    sample = {"id": torch.arange(source.shape[0]), "net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)}}
    if names:
        sample["clip_names"] = names
    return sample


def test_frontend_stft_stays_fp32_under_bf16_autocast():
    frontend = LogmelFrontend(RATE)
    source = silent_and_clipped()
    reference, _ = frontend(source)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logmel, _ = frontend(source)
    assert logmel.dtype == torch.float32 and torch.equal(logmel, reference)
    assert torch.isfinite(logmel).all()
    assert torch.allclose(logmel[0], torch.full_like(logmel[0], float(np.log(LOG_FLOOR))))
    # The power spectrum of clipped audio overflows fp16: why the STFT must not run in it.
    assert reference[1].exp().max() > FP16_MAX and reference[2].exp().max() > FP16_MAX
    assert reference.abs().max() < 30


def test_bf16_autocast_training_step_on_silent_and_clipped_clips_is_finite():
    model = tiny_model().train()
    criterion = LogmelContrastiveCriterion(LogmelContrastiveConfig(), task=None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, sample_size, _ = criterion(model, batch(silent_and_clipped()))
    assert sample_size > 0 and torch.isfinite(loss)
    loss.backward()
    bad = [name for name, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad}"


def test_half_precision_model_keeps_an_fp32_stft():
    model = tiny_model().half()
    features, _ = model.extract_features(silent_and_clipped().half())
    assert torch.isfinite(features).all()


def test_fairseq_fp16_with_dynamic_loss_scaling_on_silent_and_clipped_clips(tmp_path):
    audio = tmp_path / "audio"
    clips = write_dataset(str(audio), num_clips=8, seconds=(1.0, 1.0), seed=4)
    entries = [(c["path"], c["num_samples"]) for c in clips]
    for index, clip in enumerate(silent_and_clipped(RATE).numpy()):
        name = f"extreme_{index}.wav"
        sf.write(str(audio / name), clip, RATE, subtype="FLOAT")
        entries.append((name, RATE))
    for split, chosen in (("train", entries), ("valid", entries[-4:])):
        with open(audio / f"{split}.tsv", "w") as f:
            print(audio, file=f)
            f.writelines(f"{name}\t{size}\n" for name, size in chosen)
    # memory_efficient_fp16 keeps fp16 weights, which only fairseq's adam updates with fp32 moments.
    result = hydra_train(
        "pretrain_tiny", str(tmp_path), f"task.data={audio}", "common.fp16=true", "common.memory_efficient_fp16=true", "optimizer._name=adam",
        "dataset.max_tokens=64000", "dataset.required_batch_size_multiple=1", "optimization.max_update=6",
    )
    updates = [json.loads(line.split(" - ", 1)[1]) for line in result.stdout.splitlines() if "[train_inner]" in line]
    # A NaN from the silent or clipped clips would overflow at every scale until fairseq gives up.
    assert [int(u["num_updates"]) for u in updates] == list(range(1, 7))
    assert all(np.isfinite(float(u["loss"])) for u in updates) and float(updates[-1]["loss_scale"]) >= 1


def test_nonfinite_loss_is_reported_with_the_clips_of_the_batch(caplog):
    model = tiny_model().train()
    criterion = LogmelContrastiveCriterion(LogmelContrastiveConfig(), task=None)
    source = silent_and_clipped()
    source[3, 100] = float("nan")
    names = [f"train.tsv:{line}" for line in range(2, 6)]
    with caplog.at_level(logging.ERROR):
        loss, _, _ = criterion(model, batch(source, names))
    assert not torch.isfinite(loss)
    assert "non-finite loss nan in a batch of 4 clips, dataset ids [0, 1, 2, 3]: train.tsv:2, train.tsv:3, train.tsv:4, train.tsv:5" in caplog.text
    assert "suspects: train.tsv:5 (NaN/Inf samples), train.tsv:4 (peak 4)" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        criterion(model, batch(silent_and_clipped(), names))
    assert "non-finite" not in caplog.text
    # A packed corpus's int16 PCM batch is read at full scale 32768: a full-scale clip is not a suspect.
    caplog.clear()
    pcm = torch.full((2, 16000), -32768, dtype=torch.int16)
    with caplog.at_level(logging.ERROR):
        assert report_nonfinite_loss(torch.tensor(float("nan")), batch(pcm, names[:2]), model)
    assert "non-finite loss nan in a batch of 2 clips" in caplog.text and "suspects" not in caplog.text


def test_the_accelerator_check_runs_only_under_fairseqs_nan_detector():
    model = tiny_model()
    assert not under_nan_detector(model)
    with NanDetector(model):
        assert under_nan_detector(model)
        wrapped = torch.nn.Module()
        wrapped.module = model
        assert under_nan_detector(wrapped)
    assert not under_nan_detector(model)
    # Off the CPU and outside the NanDetector re-run, the loss is not read (no host-device sync).
    assert not report_nonfinite_loss(torch.full((), float("nan"), device="meta"), batch(silent_and_clipped()), model)


def test_pretraining_reports_the_clip_behind_a_nan_loss(tmp_path):
    audio = tmp_path / "audio"
    clips = write_dataset(str(audio), num_clips=8, seconds=(1.0, 1.0), seed=6)
    # Finite samples, but their power spectrum overflows fp32: the loss becomes NaN.
    sf.write(str(audio / "garbage.wav"), np.full(RATE, 1e20, np.float32), RATE, subtype="FLOAT")
    entries = [(c["path"], c["num_samples"]) for c in clips] + [("garbage.wav", RATE)]
    for split in ("train", "valid"):
        with open(audio / f"{split}.tsv", "w") as f:
            print(audio, file=f)
            f.writelines(f"{name}\t{size}\n" for name, size in entries)
    result = subprocess.run(
        [os.path.join(BIN_DIR, "fairseq-hydra-train"), "--config-name", "pretrain_tiny", "common.cpu=true", f"task.data={audio}",
         f"checkpoint.save_dir={tmp_path}/checkpoints", f"hydra.run.dir={tmp_path}/run", "dataset.max_tokens=200000",
         "dataset.required_batch_size_multiple=1", "optimization.max_update=2"],
        cwd=str(tmp_path), capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    log = result.stdout + result.stderr
    assert result.returncode != 0 and "FloatingPointError" in log
    assert "non-finite loss nan in a batch of 9 clips" in log
    assert f"suspects: {audio}/train.tsv:10 (peak 1e+20)" in log

"""A damaged or foreign checkpoint is named, with what is wrong with it, by every entry point that loads one;
one whose config has fields a later version removed loads with a warning."""
import logging
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import BIN_DIR
from omegaconf import OmegaConf

from fairseq_logmel_conformer.checkpoint import CheckpointError, verify_checkpoint
from fairseq_logmel_conformer.inference import AudioModel
from fairseq_logmel_conformer.models.logmel_conformer_classifier import LogmelConformerClassifierConfig, resolve_encoder


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, pretrained_checkpoint):
    """{kind: (path, what the message must say)}: a checkpoint cut short, and a text file."""
    folder = tmp_path_factory.mktemp("bad_checkpoints")
    data = open(pretrained_checkpoint, "rb").read()
    cut = folder / "cut_short.pt"
    cut.write_bytes(data[: len(data) // 2])
    text = folder / "notes.pt"
    text.write_text("these are my notes, not a model\n")
    return {"cut short": (str(cut), "corrupt or cut short"), "text": (str(text), "not a torch checkpoint")}


COMMANDS = {
    "logmel-embed": lambda checkpoint, audio, out: [checkpoint, audio, "--out", out],
    "logmel-tag": lambda checkpoint, audio, out: [checkpoint, audio],
    "logmel-evaluate": lambda checkpoint, audio, out: [checkpoint, "--out", out],
    "logmel-export": lambda checkpoint, audio, out: [checkpoint, "--torchscript", os.path.join(out, "encoder.pt")],
}


@pytest.mark.parametrize("kind", ["cut short", "text"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_names_a_bad_checkpoint_and_says_what_is_wrong(command, kind, bad_checkpoints, labelled_corpus, tmp_path):
    path, problem = bad_checkpoints[kind]
    arguments = COMMANDS[command](path, os.path.join(labelled_corpus, "tone_0000.wav"), str(tmp_path / "out"))
    result = subprocess.run([os.path.join(BIN_DIR, command), *arguments], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"error: {path}: {problem}" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr, result.stderr[-3000:]


def test_the_python_api_raises_a_checkpoint_error_naming_the_file(bad_checkpoints):
    for path, problem in bad_checkpoints.values():
        with pytest.raises(CheckpointError, match=f"^{path}: {problem}") as raised:
            AudioModel.from_checkpoint(path)
        # Raised outside torch's own error: its advice to unpickle without safeguards is not passed on.
        assert raised.value.__context__ is None and raised.value.__cause__ is None
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint file"):
        AudioModel.from_checkpoint(os.path.join(os.path.dirname(path), "missing.pt"))


def test_intact_checkpoints_pass_the_check(pretrained_checkpoint, finetuned_checkpoint):
    assert verify_checkpoint(pretrained_checkpoint) is None and verify_checkpoint(finetuned_checkpoint) is None


def with_removed_fields(source: str, destination: str) -> str:
    """``source`` saved again as an older version of the plugin would have: its model config (and a fine-tuned
    model's ``encoder`` config) sets ``contrastive_targets``, a field this version does not have."""
    state = torch.load(source, map_location="cpu", weights_only=False)
    model = state["cfg"]["model"]
    for node in (model, model.get("encoder")):
        if node is not None:
            node["contrastive_targets"] = "latents"
    torch.save(state, destination)
    return destination


def test_a_checkpoint_with_fields_this_version_removed_loads_the_same_model_with_a_warning(
    pretrained_checkpoint, finetuned_checkpoint, tmp_path, caplog
):
    audio = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32) * 0.1
    for name, source, removed in (
        ("pretrained", pretrained_checkpoint, ["model.contrastive_targets"]),
        ("finetuned", finetuned_checkpoint, ["model.contrastive_targets", "model.encoder.contrastive_targets"]),
    ):
        old = with_removed_fields(source, str(tmp_path / f"{name}_old.pt"))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fairseq_logmel_conformer.checkpoint"):
            model = AudioModel.from_checkpoint(old)
        warned = [record.getMessage() for record in caplog.records]
        assert len(warned) == len(removed), warned
        for field, message in zip(removed, warned):
            assert message.startswith(f"{old}: {field}='latents' is not a field of this version's"), message
        reference = AudioModel.from_checkpoint(source)
        np.testing.assert_array_equal(model.embed(audio, 16000).frame_embeddings, reference.embed(audio, 16000).frame_embeddings)

    # Fine-tuning from such a pre-training checkpoint: the encoder config it saves has only this version's fields.
    old = str(tmp_path / "pretrained_old.pt")
    cfg = OmegaConf.structured(LogmelConformerClassifierConfig(pretrained_path=old, sample_rate=16000, class_names=["a"]))
    assert resolve_encoder(cfg) is not None
    assert "contrastive_targets" not in cfg.encoder and cfg.encoder["_name"] == "logmel_conformer"

"""A damaged or foreign checkpoint is named, with what is wrong with it, by every entry point that loads one."""
import os
import subprocess

import pytest
from conftest import BIN_DIR

from fairseq_logmel_conformer.checkpoint import CheckpointError, verify_checkpoint
from fairseq_logmel_conformer.inference import AudioModel


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

"""``logmel-embed`` (resumable .npy export) and ``logmel-tag`` (top-k labels, PNG timelines)."""
import argparse
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO_ROOT, run_cli

from fairseq_logmel_conformer.cli import embed, evaluate, tag
from fairseq_logmel_conformer.data.manifest import read_manifest
from fairseq_logmel_conformer.inference import AudioModel


@pytest.fixture
def audio_folder(tmp_path, labelled_corpus):
    """Three readable clips (one in a subfolder), one corrupt file and one too short for a single step."""
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(os.path.join(labelled_corpus, "tone_0000.wav"), folder / "a.wav")
    shutil.copy(os.path.join(labelled_corpus, "chirp_0001.wav"), folder / "b.wav")
    shutil.copy(os.path.join(labelled_corpus, "clicks_0003.wav"), folder / "sub" / "c.wav")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00not audio at all")
    sf.write(folder / "short.wav", np.zeros(500, np.float32), 16000)
    return folder


def test_embed_folder_is_resumable_and_lists_unreadable_files(pretrained_checkpoint, audio_folder, tmp_path, capsys):
    out = tmp_path / "embeddings"
    args = [pretrained_checkpoint, str(audio_folder), "--out-dir", str(out)]
    assert embed.main(args) == 1
    err = capsys.readouterr().err
    assert "3 written, 0 skipped (already done), 2 unreadable" in err
    assert "broken.wav: cannot read audio file" in err
    assert "short.wav: audio too short: 500 samples (0.031 s) at 16000 Hz, the minimum is 960 (0.060 s)" in err
    assert sorted((out / "unreadable.txt").read_text().splitlines()) == sorted(line.strip() for line in err.splitlines() if line.startswith("  "))
    model = AudioModel.from_checkpoint(pretrained_checkpoint)
    for relative in ("a", "b", "sub/c"):
        saved = np.load(out / f"{relative}.npy")
        np.testing.assert_allclose(saved, model.embed(str(audio_folder / f"{relative}.wav")).frame_embeddings, atol=1e-6)
    assert not list(out.rglob("*.partial"))
    info = json.loads((out / "embedding_info.json").read_text())
    assert info["embedding_dim"] == model.embedding_dim and info["step_seconds"] == pytest.approx(0.08)
    assert info["first_timestamp"] == pytest.approx(0.03)

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert embed.main(args) == 1
    assert "0 written, 3 skipped (already done), 2 unreadable" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == mtimes

    (audio_folder / "broken.wav").unlink()
    (audio_folder / "short.wav").unlink()
    os.remove(out / "b.npy")
    assert embed.main(args) == 0
    assert "1 written, 2 skipped (already done), 0 unreadable" in capsys.readouterr().err
    assert (out / "b.npy").exists() and (out / "unreadable.txt").read_text() == ""


def test_embed_takes_audio_files_folders_and_manifests_like_tag(pretrained_checkpoint, audio_folder, labelled_corpus, tmp_path):
    """One file, a folder and a manifest in one call; --out-dir, the old spelling of --out, still works."""
    out = tmp_path / "mixed"
    single = str(audio_folder / "a.wav")
    manifest = os.path.join(labelled_corpus, "valid.tsv")
    (audio_folder / "broken.wav").unlink()
    (audio_folder / "short.wav").unlink()
    assert embed.main([pretrained_checkpoint, single, str(audio_folder / "sub"), manifest, "--out-dir", str(out), "--clip-only"]) == 0
    names = sorted(str(path.relative_to(out)) for path in out.rglob("*.npy"))
    expected = ["a.npy", "c.npy"] + [os.path.splitext(f)[0] + ".npy" for f in read_manifest(manifest).files]
    assert names == sorted(expected)
    model = AudioModel.from_checkpoint(pretrained_checkpoint)
    np.testing.assert_allclose(np.load(out / "a.npy"), model.embed(single).clip_embedding, atol=1e-6)


def test_commands_default_to_the_gpu_when_there_is_one(monkeypatch):
    from fairseq_logmel_conformer.cli.common import add_device_arguments, device

    parser = argparse.ArgumentParser()
    add_device_arguments(parser)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device(parser.parse_args([])) == torch.device("cuda")
    assert device(parser.parse_args(["--cpu"])) == torch.device("cpu")
    assert device(parser.parse_args(["--device", "cuda:1"])) == torch.device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device(parser.parse_args([])) == torch.device("cpu")
    for main in (embed.main, tag.main, evaluate.main):
        with pytest.raises(SystemExit):
            main(["--help"])


def test_embed_manifest_writes_clip_embeddings(pretrained_checkpoint, labelled_corpus, tmp_path):
    out = tmp_path / "clips"
    manifest = os.path.join(labelled_corpus, "valid.tsv")
    assert embed.main([pretrained_checkpoint, manifest, "--out", str(out), "--clip-only", "--window-seconds", "1", "--overlap-seconds", "0.4"]) == 0
    entries = read_manifest(manifest)
    model = AudioModel.from_checkpoint(pretrained_checkpoint, window_seconds=1.0, overlap_seconds=0.4)
    assert len(list(out.glob("*.npy"))) == len(entries.files)
    saved = [np.load(out / (os.path.splitext(relative)[0] + ".npy")) for relative in entries.files]
    assert all(array.shape == (model.embedding_dim,) for array in saved)
    for index in (0, len(saved) - 1):
        np.testing.assert_allclose(saved[index], model.embed(entries.audio_path(index)).clip_embedding, atol=1e-6)


def test_tag_prints_top_k_and_writes_timelines(finetuned_checkpoint, audio_folder, labelled_corpus, tmp_path, capsys):
    plots = tmp_path / "plots"
    labels = tmp_path / "labels.txt"
    names = open(os.path.join(labelled_corpus, "labels.txt")).read().split()
    labels.write_text("".join(f"{name}\t{name.upper()}\n" for name in names))
    files = [str(audio_folder / "a.wav"), str(audio_folder / "sub"), str(audio_folder / "broken.wav")]
    code = tag.main([finetuned_checkpoint, *files, "--top-k", "3", "--timeline-dir", str(plots), "--timeline-classes", "2", "--labels", str(labels)])
    assert code == 1
    captured = capsys.readouterr()
    assert "1 unreadable file(s)" in captured.err and "broken.wav" in captured.err
    lines = captured.out.splitlines()
    assert lines[0] == files[0] and lines[4] == str(audio_folder / "sub" / "c.wav") and len(lines) == 8
    model = AudioModel.from_checkpoint(finetuned_checkpoint)
    expected = model.predict(files[0]).top_k(3)
    printed = [line.split("\t") for line in lines[1:4]]
    assert [label for _, label in printed] == [name.upper() for name, _ in expected]
    np.testing.assert_allclose([float(p) for p, _ in printed], [p for _, p in expected], atol=1e-4)
    for name in ("a.png", "c.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in plots.iterdir()) == ["a.png", "c.png"]


def test_tag_timeline_scales_each_class_to_its_peak(finetuned_checkpoint, audio_folder, tmp_path, monkeypatch):
    """On a fixed 0-1 scale a quiet class was black: every row of the heat map reaches the top of its colour scale."""
    from matplotlib.figure import Figure

    saved = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda figure, *args, **kwargs: (saved.append(figure), savefig(figure, *args, **kwargs)))
    assert tag.main([finetuned_checkpoint, str(audio_folder / "a.wav"), "--timeline-dir", str(tmp_path / "plots"), "--timeline-classes", "5"]) == 0
    image = saved[0].axes[0].images[0]
    low, high = image.get_clim()
    shown = (np.asarray(image.get_array()) - low) / (high - low)
    assert shown.shape[0] == 5
    np.testing.assert_allclose(shown.max(axis=1), 1.0, rtol=1e-6)
    assert "peak" in saved[0].axes[1].get_ylabel() and all("peak" in label.get_text() for label in saved[0].axes[0].get_yticklabels())


def test_tag_refuses_a_pretrained_checkpoint(pretrained_checkpoint, audio_folder):
    with pytest.raises(SystemExit, match="without a classifier"):
        tag.main([pretrained_checkpoint, str(audio_folder / "a.wav")])


def test_example_script_runs(finetuned_checkpoint, tmp_path):
    """A fine-tuned checkpoint: embeddings, then class probabilities, one class per second of the 25 s recording."""
    example = os.path.join(REPO_ROOT, "examples", "extract_embeddings.py")
    output = run_cli(["python", example, finetuned_checkpoint], cwd=str(tmp_path)).stdout
    assert "array and file input agree: max difference 0.0e+00" in output
    assert "frame embeddings (312, 64), clip embedding (64,), 25.00 s" in output
    assert "timestamps (step centres, s): [0.03 0.11 0.19 0.27] ... 24.910" in output
    per_second = output.split("most probable class each second: ", 1)[1].splitlines()[0]
    assert len(per_second.split(", ")) == 25, per_second

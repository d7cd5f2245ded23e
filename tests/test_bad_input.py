"""Bad input to the data path shared by pre-training, fine-tuning and evaluation (read_audio, read_manifest,
ManifestAudioDataset, label files) and to the manifest tool: each case either works as documented in
fairseq_logmel_conformer/data/audio.py or fails fast with a message naming the file (and manifest line)."""
import io
import logging
import os
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import BIN_DIR, hydra_train, run_cli
from fairseq_logmel_conformer.data.audio import AudioReadError, num_samples_at_rate, read_audio
from fairseq_logmel_conformer.data.manifest import check_manifest, read_manifest
from fairseq_logmel_conformer.data.labels import LabelVocabulary, read_label_file
from fairseq_logmel_conformer.data.manifest_dataset import PROBED_ENTRIES, ManifestAudioDataset
from fairseq_logmel_conformer.data.synthetic import write_dataset

RATE = 16000


def tone(seconds: float, rate: int, frequency: float = 1000.0, channels: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels else wave


def write(path, samples, rate=RATE, subtype=None) -> str:
    sf.write(str(path), samples, rate, subtype=subtype)
    return str(path)


def write_manifest(folder, entries, root=None) -> str:
    """``entries``: (relative path, num samples) or raw line strings."""
    path = os.path.join(str(folder), "train.tsv")
    with open(path, "w") as f:
        print(root or str(folder), file=f)
        for entry in entries:
            print(entry if isinstance(entry, str) else f"{entry[0]}\t{entry[1]}", file=f)
    return path


# --- files that cannot be read: an AudioReadError that names the file -----------------------------


def test_missing_file(tmp_path):
    with pytest.raises(AudioReadError, match=rf"{tmp_path}/nowhere.wav: no such file"):
        read_audio(str(tmp_path / "nowhere.wav"), RATE)


def test_empty_file_of_zero_bytes(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioReadError, match=r"empty.wav: the file is empty \(0 bytes\)"):
        read_audio(str(tmp_path / "empty.wav"), RATE)


def test_audio_file_with_zero_samples(tmp_path):
    path = write(tmp_path / "nothing.wav", np.zeros(0, np.float32))
    with pytest.raises(AudioReadError, match="nothing.wav: it holds no samples"):
        read_audio(path, RATE)


def test_non_audio_file_with_an_audio_extension(tmp_path):
    for name in ("text.wav", "text.flac", "text.mp3"):
        (tmp_path / name).write_text("this is not audio\n" * 20)
        with pytest.raises(AudioReadError, match=rf"cannot read audio file {tmp_path}/{name}: "):
            read_audio(str(tmp_path / name), RATE)


def test_truncated_wav_is_rejected_not_silently_shortened(tmp_path):
    path = write(tmp_path / "cut.wav", tone(1.0, RATE))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    # libsndfile alone would return the first half without complaint.
    assert sf.read(path)[0].shape[0] < RATE
    for reader in (read_audio, num_samples_at_rate):
        with pytest.raises(AudioReadError, match=r"cut.wav: truncated, the WAV header declares 32000 bytes of audio but the file holds"):
            reader(path, RATE)


def test_truncated_flac_and_corrupt_header(tmp_path):
    flac = write(tmp_path / "cut.flac", tone(1.0, RATE))
    data = open(flac, "rb").read()
    open(flac, "wb").write(data[: len(data) // 2])
    with pytest.raises(AudioReadError, match="cut.flac"):
        read_audio(flac, RATE)
    header = write(tmp_path / "header.wav", tone(1.0, RATE))
    data = open(header, "rb").read()
    open(header, "wb").write(data[:30])
    with pytest.raises(AudioReadError, match="header.wav: Error opening .*No 'data' chunk marker"):
        read_audio(header, RATE)


def test_nan_or_inf_samples(tmp_path):
    samples = tone(0.5, RATE)
    samples[100], samples[200], samples[300] = np.nan, np.inf, -np.inf
    path = write(tmp_path / "nan.wav", samples, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="nan.wav: 3 NaN or Inf sample values"):
        read_audio(path, RATE)


# --- files that work: resampled, down-mixed, any sample format ---------------------------------------


def dominant_frequency(samples: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.numpy()))
    return float(np.fft.rfftfreq(samples.shape[0], 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_are_resampled(tmp_path, rate):
    path = write(tmp_path / f"tone_{rate}.wav", tone(1.0, rate, frequency=1000.0), rate)
    samples = read_audio(path, RATE)
    assert samples.dtype == torch.float32 and samples.dim() == 1
    assert samples.shape[0] == num_samples_at_rate(path, RATE) == RATE
    assert dominant_frequency(samples, RATE) == pytest.approx(1000.0, abs=2.0)
    assert samples[1000:-1000].abs().max() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_audio_is_averaged(tmp_path, channels):
    levels = np.linspace(-0.5, 0.5, channels, dtype=np.float32)
    path = write(tmp_path / f"ch{channels}.wav", np.ones((RATE // 10, channels), np.float32) * levels, subtype="FLOAT")
    samples = read_audio(path, RATE)
    assert samples.shape == (RATE // 10,)
    assert torch.allclose(samples, torch.full_like(samples, float(levels.mean())), atol=1e-6)


@pytest.mark.parametrize("subtype,tolerance", [("PCM_U8", 1 / 64), ("PCM_16", 1e-4), ("PCM_24", 1e-6), ("FLOAT", 0.0), ("DOUBLE", 0.0)])
def test_wav_sample_formats(tmp_path, subtype, tolerance):
    original = tone(0.25, RATE, frequency=440.0)
    samples = read_audio(write(tmp_path / f"{subtype}.wav", original, subtype=subtype), RATE)
    assert samples.dtype == torch.float32
    assert (samples - torch.from_numpy(original)).abs().max() <= tolerance


def test_silence_and_full_scale_float_values_pass_through(tmp_path):
    assert not read_audio(write(tmp_path / "zeros.wav", np.zeros(RATE, np.float32)), RATE).any()
    hot = np.full(RATE // 10, 2.0, np.float32)
    assert read_audio(write(tmp_path / "hot.wav", hot, subtype="FLOAT"), RATE).max() == 2.0


# --- manifests ---------------------------------------------------------------------------------------


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"manifest {tmp_path}/train.tsv does not exist"):
        read_manifest(str(tmp_path / "train.tsv"))


def test_manifest_without_root_line(tmp_path):
    path = write_manifest(tmp_path, [("a.wav", 16000)])
    lines = open(path).read().splitlines()
    open(path, "w").write("\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"train.tsv:1: expected the root folder, got an entry 'a.wav\\t16000'; is the root line missing\?"):
        read_manifest(path)


def test_malformed_manifest_lines_name_the_line(tmp_path):
    path = write_manifest(tmp_path, [("a.wav", 16000), "b.wav 16000", ("c.wav", 16000), "d.wav\t-5"])
    with pytest.raises(ValueError, match=r"train.tsv:3: expected 'relative/path<TAB>num_samples', got 'b.wav 16000'"):
        read_manifest(path)
    problems = []
    manifest = read_manifest(path, problems=problems)
    assert [p.split(": ")[0] for p in problems] == [f"{path}:3", f"{path}:5"]
    assert manifest.files == ["a.wav", "c.wav"] and manifest.location(1) == f"{path}:4"


def clips_folder(tmp_path, count=12):
    folder = tmp_path / "clips"
    clips = write_dataset(str(folder), num_clips=count, seconds=(0.5, 0.5), seed=0)
    return folder, [(c["path"], c["num_samples"]) for c in clips]


def test_dataset_fails_fast_on_a_missing_root_folder(tmp_path):
    folder, entries = clips_folder(tmp_path)
    path = write_manifest(tmp_path, entries, root=str(tmp_path / "moved"))
    with pytest.raises(FileNotFoundError, match=rf"train.tsv:1: the audio root folder {tmp_path}/moved does not exist"):
        ManifestAudioDataset(path, RATE)


def test_dataset_fails_fast_on_a_manifest_counted_at_another_rate(tmp_path):
    folder, entries = clips_folder(tmp_path)
    # e.g. a manifest of 44.1 kHz files written by a tool that counts samples at the file's own rate.
    path = write_manifest(folder, [(name, size * 44100 // RATE) for name, size in entries])
    with pytest.raises(AudioReadError, match=rf"{PROBED_ENTRIES} of {PROBED_ENTRIES} probed clips are unreadable:\n.*train.tsv:2: .*has 8000 samples at 16000 Hz but the manifest says 22050"):
        ManifestAudioDataset(path, RATE)


def test_dataset_names_manifest_line_of_an_unreadable_clip(tmp_path):
    folder, entries = clips_folder(tmp_path, count=20)
    # Entry 1 (line 3) is not among the probed entries, so the dataset builds and fails when the clip is read.
    (folder / entries[1][0]).write_text("not audio")
    dataset = ManifestAudioDataset(write_manifest(folder, entries), RATE)
    assert 1 not in np.linspace(0, 19, PROBED_ENTRIES).round()
    with pytest.raises(AudioReadError, match=rf"train.tsv:3: cannot read audio file {folder}/{entries[1][0]}: .*\nRun `logmel-manifest --check {folder}/train.tsv`"):
        dataset[1]


def test_dataset_rejects_a_clip_whose_length_disagrees_with_the_manifest(tmp_path):
    folder, entries = clips_folder(tmp_path, count=20)
    write(folder / entries[1][0], tone(0.25, RATE))
    dataset = ManifestAudioDataset(write_manifest(folder, entries), RATE)
    with pytest.raises(AudioReadError, match=r"train.tsv:3: .* has 4000 samples at 16000 Hz but the manifest says 8000"):
        dataset[1]


def test_short_clips_are_left_out_with_a_warning(tmp_path, caplog):
    folder, entries = clips_folder(tmp_path)
    write(folder / "short.wav", tone(0.05, RATE))
    with caplog.at_level(logging.WARNING):
        dataset = ManifestAudioDataset(write_manifest(folder, entries + [("short.wav", 800)]), RATE, min_sample_size=1280)
    assert len(dataset) == len(entries) and "left out 1 clips (task.min_sample_size=1280)" in caplog.text
    assert "train.tsv:14: " + os.path.join(folder, "short.wav") + ": too short: 800 samples (0.050 s) at 16000 Hz, the minimum is 1280 (0.080 s)" in caplog.text
    with pytest.raises(ValueError, match="none of its 1 clips is long enough to train on"):
        ManifestAudioDataset(write_manifest(folder, [("short.wav", 800)]), RATE, min_sample_size=1280)


def test_opt_in_skipping_warns_counts_and_stops_when_a_whole_batch_is_unreadable(tmp_path, caplog):
    folder, entries = clips_folder(tmp_path, count=20)
    (folder / entries[1][0]).write_bytes(b"")
    (folder / entries[2][0]).unlink()
    dataset = ManifestAudioDataset(write_manifest(folder, entries), RATE, skip_unreadable=True)
    with caplog.at_level(logging.WARNING):
        batch = dataset.collater([dataset[i] for i in range(4)])
    assert batch["unreadable_clips"] == 2 and batch["id"].tolist() == [0, 3]
    assert batch["clip_names"] == [f"{dataset.manifest.path}:2", f"{dataset.manifest.path}:5"]
    assert f"skipping unreadable clip {dataset.manifest.path}:3: " in caplog.text and "(0 bytes)" in caplog.text
    assert f"skipping unreadable clip {dataset.manifest.path}:4: " in caplog.text and "no such file" in caplog.text
    with pytest.raises(AudioReadError, match="every clip of a batch is unreadable"):
        dataset.collater([dataset[1], dataset[2]])
    assert dataset.collater([]) == {}


def test_crops_follow_the_epoch_in_loader_workers(tmp_path):
    """fairseq keeps loader workers (and their copy of the dataset) across epochs: the epoch must reach them."""
    folder, entries = clips_folder(tmp_path, count=4)
    dataset = ManifestAudioDataset(write_manifest(folder, entries), RATE, max_sample_size=2000)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, persistent_workers=True)
    crops = []
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        crops.append([item["source"] for item in loader])
    in_process = [dataset[i]["source"] for i in range(len(dataset))]
    assert all(torch.equal(a, b) for a, b in zip(crops[1], in_process))
    assert not all(torch.equal(a, b) for a, b in zip(crops[0], crops[1]))


# --- label files (the fine-tuning reader) ------------------------------------------------------------


def test_label_file_with_unknown_labels_or_wrong_line_count(tmp_path):
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    vocabulary = LabelVocabulary.read(str(tmp_path / "labels.txt"))
    (tmp_path / "train.labels").write_text("dog\ncat,cow\n")
    with pytest.raises(ValueError, match=r"train.labels:2: unknown label\(s\) \['cow'\]"):
        read_label_file(str(tmp_path / "train.labels"), vocabulary, 2, single_label=False)
    with pytest.raises(ValueError, match=r"train.labels: 2 label lines, but the manifest lists 3 clips"):
        read_label_file(str(tmp_path / "train.labels"), vocabulary, 3, single_label=False)


# --- the manifest tool: build leaves bad files out, --check reports every problem at once ---------------


def test_manifest_build_leaves_out_and_lists_bad_files(tmp_path):
    folder, entries = clips_folder(tmp_path, count=4)
    write(folder / "short.wav", tone(0.05, RATE))
    (folder / "empty.wav").write_bytes(b"")
    cut = write(folder / "cut.wav", tone(1.0, RATE))
    data = open(cut, "rb").read()
    open(cut, "wb").write(data[:10000])
    write(folder / "stereo48k.wav", tone(1.0, 48000, channels=2), 48000)
    result = run_cli(["logmel-manifest", str(folder), "--dest", str(tmp_path / "m"), "--valid-percent", "0", "--jobs", "1"], cwd=str(tmp_path))
    assert "2 unreadable, 1 too short" in result.stdout
    listed = dict(line.split("\t") for line in (tmp_path / "m" / "train.tsv").read_text().splitlines()[1:])
    assert set(listed) == {name for name, _ in entries} | {"stereo48k.wav"} and listed["stereo48k.wav"] == "16000"
    report = (tmp_path / "m" / "unreadable.txt").read_text()
    assert "empty.wav: the file is empty" in report and "cut.wav: truncated" in report and "short.wav: too short: 800 samples (0.050 s) at 16000 Hz, the minimum is 960 (0.060 s)" in report


def test_manifest_build_refuses_to_replace_a_different_split(tmp_path):
    folder, _ = clips_folder(tmp_path, count=10)
    dest = tmp_path / "m"

    def build(*extra, check=True):
        command = [os.path.join(BIN_DIR, "logmel-manifest"), str(folder), "--dest", str(dest), "--valid-percent", "0.3", "--jobs", "1", *extra]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))

    assert build("--seed", "1").returncode == 0
    first = {split: (dest / f"{split}.tsv").read_text() for split in ("train", "valid")}
    again = build("--seed", "1")
    assert again.returncode == 0, "the same split is written again"
    other = build("--seed", "2")
    assert other.returncode == 1
    assert f"error: {dest} already holds a train/valid split that differs from this one (7 train and 3 valid clips there" in other.stderr
    assert "Pass --overwrite to replace it" in other.stderr
    assert {split: (dest / f"{split}.tsv").read_text() for split in ("train", "valid")} == first, "nothing was replaced"
    replaced = build("--seed", "2", "--overwrite")
    assert replaced.returncode == 0 and (dest / "valid.tsv").read_text() != first["valid"]


def test_one_minimum_clip_length_with_one_message_everywhere(tmp_path, pretrained_checkpoint):
    """logmel-manifest, training and logmel-embed agree on the shortest clip (the 960 samples of one model step at
    16 kHz, the encoder's own minimum) and describe a clip below it in the same words."""
    from fairseq_logmel_conformer.data.audio import min_clip_samples
    from fairseq_logmel_conformer.inference import AudioModel
    from fairseq_logmel_conformer.tasks.logmel_pretraining import LogmelPretrainingConfig

    model = AudioModel.from_checkpoint(pretrained_checkpoint)
    assert min_clip_samples(RATE) == model.geometry.min_samples == LogmelPretrainingConfig.min_sample_size == 960
    message = "too short: 900 samples (0.056 s) at 16000 Hz, the minimum is 960 (0.060 s)"
    folder, entries = clips_folder(tmp_path, count=3)
    short = write(folder / "short.wav", tone(900 / RATE, RATE))
    run_cli(["logmel-manifest", str(folder), "--dest", str(tmp_path / "m"), "--valid-percent", "0", "--jobs", "1"], cwd=str(tmp_path))
    assert (tmp_path / "m" / "unreadable.txt").read_text() == f"{short}: {message}\n"
    dataset_log = io.StringIO()
    handler = logging.StreamHandler(dataset_log)
    logging.getLogger("fairseq_logmel_conformer.data.manifest_dataset").addHandler(handler)
    try:
        ManifestAudioDataset(write_manifest(folder, entries + [("short.wav", 900)]), RATE, min_sample_size=min_clip_samples(RATE))
    finally:
        logging.getLogger("fairseq_logmel_conformer.data.manifest_dataset").removeHandler(handler)
    assert f"train.tsv:5: {short}: {message}" in dataset_log.getvalue()
    with pytest.raises(ValueError, match=re.escape(f"audio {message}")):
        model.embed(short)


def test_long_work_shows_progress_on_a_terminal_and_not_in_logs(tmp_path):
    """tqdm's bar with its rate on a terminal (stderr is a TTY); nothing of it when the output goes to a log file."""
    import fcntl
    import struct
    import termios

    folder, _ = clips_folder(tmp_path, count=6)
    command = [os.path.join(BIN_DIR, "logmel-manifest"), str(folder), "--dest", str(tmp_path / "m"), "--valid-percent", "0", "--jobs", "1"]
    logged = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert logged.returncode == 0 and "reading headers" not in logged.stderr and "file/s" not in logged.stderr
    assert re.search(r"read 6 headers in [0-9.]+ s \([0-9]+ files/s, 1 processes\)", logged.stdout)
    # A terminal of 120 columns: the command's stdout and stderr are the pseudo-terminal, as in an interactive shell.
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    process = subprocess.Popen(command + ["--overwrite"], stdin=terminal, stdout=terminal, stderr=terminal, env=dict(os.environ, OMP_NUM_THREADS="1"))
    os.close(terminal)
    output = bytearray()
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the command has closed the terminal
            break
        if not data:
            break
        output.extend(data)
    os.close(master)
    assert process.wait(timeout=300) == 0
    assert re.search(r"reading headers: 100%\|.*\| 6/6 \[.*file/s\]", output.decode(errors="replace")), output.decode(errors="replace")


def test_check_reports_every_problem_at_once(tmp_path):
    folder, entries = clips_folder(tmp_path, count=3)
    (folder / "text.wav").write_text("not audio")
    nan = tone(0.5, RATE)
    nan[5] = np.nan
    write(folder / "nan.wav", nan, subtype="FLOAT")
    write(folder / "short.wav", tone(0.05, RATE))
    write(folder / "silent.wav", np.zeros(RATE // 2, np.float32))
    manifest = write_manifest(
        folder,
        entries
        + [
            ("missing.wav", 8000),  # line 5
            ("text.wav", 8000),  # line 6
            "no tab here",  # line 7
            ("nan.wav", 8000),  # line 8
            ("short.wav", 800),  # line 9
            (entries[0][0], 9999),  # line 10
            ("silent.wav", 8000),  # line 11
        ],
    )
    (folder / "labels.txt").write_text("tone\nchirp\n")
    (folder / "train.labels").write_text("tone\n" * 9)

    report = check_manifest(manifest, RATE, min_samples=1280)
    where = lambda line: f"{manifest}:{line}: "  # noqa: E731
    expected = {
        5: "no such file", 6: "cannot read audio file", 7: "expected 'relative/path<TAB>num_samples'", 8: "1 NaN or Inf sample values",
        9: "too short: 800 samples (0.050 s) at 16000 Hz, the minimum is 1280 (0.080 s)", 10: "the manifest says 9999 samples, the file has 8000",
    }
    for line, message in expected.items():
        assert any(p.startswith(where(line)) and message in p for p in report.problems), (line, report.problems)
    assert any("train.labels" in p and "train.labels: 9 label lines, but the manifest lists 10 clips" in p for p in report.problems)
    assert len(report.problems) == len(expected) + 1, report.problems
    assert report.notes == [f"{where(11)}note: {folder}/silent.wav: digital silence (every sample is zero)"]


def test_check_command_exit_status(tmp_path):
    folder, entries = clips_folder(tmp_path, count=3)
    good = write_manifest(folder, entries)
    assert run_cli(["logmel-manifest", "--jobs", "2", "--check", good], cwd=str(tmp_path)).stdout.endswith(f"0 problem(s), 0 note(s) in {good}\n")
    bad_folder = tmp_path / "bad"
    bad_folder.mkdir()
    bad = write_manifest(bad_folder, [("missing.wav", 8000)])
    result = subprocess.run([os.path.join(BIN_DIR, "logmel-manifest"), "--check", good, bad], capture_output=True, text=True)
    assert result.returncode == 1
    assert f"{bad}:2: cannot read audio file {bad_folder}/missing.wav: no such file" in result.stdout
    assert f"1 problem(s), 0 note(s) in {bad}" in result.stdout


# --- pre-training end to end: fail fast by default, skip and count when asked --------------------------


@pytest.fixture(scope="module")
def corpus_with_a_corrupt_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corrupt_corpus")
    clips = write_dataset(str(folder), num_clips=20, seconds=(1.0, 1.0), seed=2)
    entries = [(c["path"], c["num_samples"]) for c in clips]
    write_manifest(folder, entries[:16])
    with open(folder / "valid.tsv", "w") as f:
        print(folder, file=f)
        f.writelines(f"{name}\t{size}\n" for name, size in entries[16:])
    # Line 3 of train.tsv: not among the entries probed when the dataset is built.
    (folder / entries[1][0]).write_bytes(open(folder / entries[1][0], "rb").read()[:5000])
    return str(folder), entries[1][0]


def test_pretraining_stops_at_an_unreadable_clip_naming_the_manifest_line(tmp_path, corpus_with_a_corrupt_clip):
    corpus, name = corpus_with_a_corrupt_clip
    result = subprocess.run(
        [os.path.join(BIN_DIR, "fairseq-hydra-train"), "--config-name", "pretrain_tiny", "common.cpu=true", f"task.data={corpus}",
         f"checkpoint.save_dir={tmp_path}/checkpoints", f"hydra.run.dir={tmp_path}/run", "dataset.max_tokens=64000",
         "dataset.required_batch_size_multiple=1", "optimization.max_update=4"],
        cwd=str(tmp_path), capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert result.returncode != 0
    assert f"{corpus}/train.tsv:3: cannot read audio file {corpus}/{name}: truncated" in result.stdout + result.stderr


def test_pretraining_skips_and_counts_unreadable_clips_when_asked(tmp_path, corpus_with_a_corrupt_clip):
    corpus, name = corpus_with_a_corrupt_clip
    result = hydra_train(
        "pretrain_tiny", str(tmp_path), f"task.data={corpus}", "++task.skip_unreadable_clips=true", "dataset.max_tokens=64000",
        "dataset.required_batch_size_multiple=1", "optimization.max_update=8",
    )
    log = result.stdout + result.stderr
    assert f"skipping unreadable clip {corpus}/train.tsv:3: cannot read audio file {corpus}/{name}: truncated" in log
    epoch_summaries = [line for line in result.stdout.splitlines() if "[train][INFO]" in line]
    # 16 clips, 4 per batch: two epochs of 4 updates, each meeting the corrupt clip once.
    assert len(epoch_summaries) == 2 and all('"train_unreadable_clips": "1"' in line for line in epoch_summaries), epoch_summaries

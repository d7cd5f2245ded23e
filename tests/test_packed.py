"""Packed corpora (``logmel-pack``, data/packed.py) and the manifest index held in arrays.

* Packed and plain reading of the same manifests give identical batches: samples, random crops (same seed),
  clips left out as too short, clip names, labels; through fairseq's batch iterator, with and without workers.
* A truncated or corrupt shard is detected with an error naming it; ``--check`` names the damaged clips.
* The pack command resumes after a SIGKILL mid-way and writes what an uninterrupted run writes; unreadable clips
  are reported and left out with the label lines of the others kept.
* Training on a packed corpus logs what the manifests give, and resumes mid-epoch exactly; fine-tuning runs end
  to end on a packed folder through fairseq-hydra-train.
"""
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import hydra_train, write_labelled_corpus
from test_resume import TRAINING, logged_updates

from fairseq_logmel_conformer.cli.pack import main as pack_main
from fairseq_logmel_conformer.data.labels import LabelVocabulary, read_label_file
from fairseq_logmel_conformer.data.manifest import Manifest, PathList, _read_manifest_lines, read_manifest, write_manifest
from fairseq_logmel_conformer.data.manifest_dataset import ManifestAudioDataset
from fairseq_logmel_conformer.data.packed import HEADER_BYTES, UNIT_SCALE, PackedCorpusError
from fairseq_logmel_conformer.data.packed_dataset import PackedAudioDataset
from fairseq_logmel_conformer.data.shared_batches import RING_SLOTS
from fairseq_logmel_conformer.modules.frontend import float_waveform
from fairseq_logmel_conformer.tasks.labelled_audio import LabelledAudioConfig
from fairseq_logmel_conformer.tasks.logmel_audio_classification import LogmelAudioClassificationTask
from fairseq_logmel_conformer.tasks.logmel_pretraining import LogmelPretrainingConfig, LogmelPretrainingTask

RATE = 16000
# Shards of about 1.6 s of audio, so that the small corpora below take several.
SHARD_MB = "0.05"
# Crops of 1 s; clips under 0.375 s are left out (some of the corpus is).
CROP = dict(max_sample_size=16000, min_sample_size=6000)


@dataclass
class Output:
    status: int
    stdout: str
    stderr: str


def logmel_pack(*argv) -> Output:
    """``logmel-pack ARGV`` in this process (its decoding processes are forked from it): no interpreter to start."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = pack_main([str(a) for a in argv])
    return Output(status, out.getvalue(), err.getvalue())


def pack(source, out, jobs="2"):
    result = logmel_pack(source, "--out", out, "--jobs", jobs, "--shard-mb", SHARD_MB)
    assert result.status == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(manifest folder, packed folder): 24 train and 8 valid clips of 0.3-2.5 s, 16-bit at 16 kHz, with labels."""
    folder = tmp_path_factory.mktemp("packed")
    manifests = write_labelled_corpus(str(folder / "audio"), num_train=24, num_valid=8, seconds=(0.3, 2.5), seed=7)
    pack(manifests, folder / "packed")
    return manifests, str(folder / "packed")


def batches(task, split, num_workers, epoch, **kwargs):
    iterator = task.get_batch_iterator(
        dataset=task.dataset(split), max_tokens=48000, seed=3, num_workers=num_workers, epoch=epoch, disable_iterator_cache=True, **kwargs
    )
    return list(iterator.next_epoch_itr(shuffle=True))


def assert_same_batches(plain, packed):
    assert len(plain) == len(packed) > 1
    for a, b in zip(plain, packed):
        assert a.keys() == b.keys() and type(b) is dict
        assert torch.equal(a["id"], b["id"]) and a["clip_names"] == b["clip_names"]
        # Packed batches of 16-bit audio travel as int16 PCM, which the model's frontend makes the same floats.
        assert b["net_input"]["source"].dtype == torch.int16
        assert torch.equal(a["net_input"]["source"], float_waveform(b["net_input"]["source"])), "samples or crops differ"
        if a["net_input"]["padding_mask"] is None:
            assert b["net_input"]["padding_mask"] is None
        else:
            assert torch.equal(a["net_input"]["padding_mask"], b["net_input"]["padding_mask"])
        if "target" in a:
            assert torch.equal(a["target"], b["target"])


def test_packed_and_plain_pretraining_splits_give_identical_batches_and_crops(corpus, caplog):
    manifests, packed = corpus
    tasks = {}
    for name, data in (("plain", manifests), ("packed", packed)):
        task = LogmelPretrainingTask(LogmelPretrainingConfig(data=data, seed=3, **CROP))
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            task.load_dataset("train")
        tasks[name] = (task, [line for line in caplog.text.splitlines() if "too short" in line])
    (plain, plain_warned), (packed_task, packed_warned) = tasks["plain"], tasks["packed"]
    assert isinstance(packed_task.dataset("train"), PackedAudioDataset)
    assert isinstance(plain.dataset("train"), ManifestAudioDataset)
    # The same clips are left out as too short, each named by its manifest line and file.
    assert plain_warned and plain_warned == packed_warned
    assert (plain.dataset("train").sizes > 16000).any(), "no clip is long enough to be cropped"
    for epoch in (1, 2):
        reference = batches(plain, "train", 0, epoch)
        assert_same_batches(reference, batches(packed_task, "train", 0, epoch))
        # In a loader worker the packed collater writes the batch into shared memory: the same batches come back.
        assert_same_batches(reference, batches(packed_task, "train", 1, epoch))
    dataset = packed_task.dataset("train")
    longest = int(dataset.sizes.argmax())
    crops = []
    for epoch in (1, 2):
        dataset.set_epoch(epoch)
        crops.append(dataset[longest]["source"])
    assert not torch.equal(*crops), "crops should change with the epoch"


def test_a_loader_worker_that_does_not_fork_opens_the_packed_split_itself(corpus):
    """spawn is macOS's default start method and forkserver Linux's from Python 3.14: the dataset must pickle."""
    _, packed = corpus
    task = LogmelPretrainingTask(LogmelPretrainingConfig(data=packed, seed=3, **CROP))
    task.load_dataset("train")
    dataset = task.dataset("train")
    dataset.set_epoch(2)
    batch_sampler = [batch.tolist() for batch in dataset.batch_by_size(dataset.ordered_indices(), max_tokens=48000)]

    def epoch(**kwargs):
        return list(torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=dataset.collater, **kwargs))

    reference = epoch(num_workers=0)
    spawned = epoch(num_workers=1, multiprocessing_context="spawn")
    assert len(reference) == len(spawned) > 1
    for a, b in zip(reference, spawned):
        assert torch.equal(a["id"], b["id"]) and torch.equal(a["net_input"]["source"], b["net_input"]["source"])


def shared_file(tensor):
    """The shared-memory file behind a tensor that a loader worker sent: the inode of its mapping (never reused)."""
    address = tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return int(fields[4])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_a_loader_worker_lends_a_shared_buffer_again_only_once_every_view_of_its_batch_is_freed(corpus):
    _, packed = corpus
    # Every clip cropped to 0.25 s, one a batch: batches of one shape.
    task = LogmelPretrainingTask(LogmelPretrainingConfig(data=packed, seed=3, max_sample_size=4000, min_sample_size=4000))
    task.load_dataset("train")

    def epoch(num_workers):
        iterator = task.get_batch_iterator(
            dataset=task.dataset("train"), max_tokens=4000, seed=3, num_workers=num_workers, epoch=1, disable_iterator_cache=True
        )
        return iterator.next_epoch_itr(shuffle=True)

    reference = [batch["net_input"]["source"] for batch in epoch(0)]
    assert len(reference) > 2 * RING_SLOTS
    # Each batch freed before the next arrives: the worker's few buffers serve the whole epoch.
    files = []
    for batch, expected in zip(epoch(1), reference):
        assert torch.equal(batch["net_input"]["source"], expected)
        files.append(shared_file(batch["net_input"]["source"]))
    assert len(files) == len(reference) and len(set(files)) <= RING_SLOTS
    # A view kept after its batch is gone keeps the buffer lent: no later batch is written over it.
    views = [batch["net_input"]["source"][:, 1:] for batch in epoch(1)]
    assert len(set(map(shared_file, views))) == len(views)
    for view, expected in zip(views, reference):
        assert torch.equal(view, expected[:, 1:])


@pytest.fixture(scope="module")
def labelled_with_a_bad_clip(tmp_path_factory):
    """(manifest folder, packed folder, pack output): a labelled corpus whose train clip 3 is not audio."""
    folder = tmp_path_factory.mktemp("labelled")
    manifests = write_labelled_corpus(str(folder / "audio"), num_train=20, num_valid=6, seconds=(0.5, 2.0), seed=11)
    bad = read_manifest(os.path.join(manifests, "train.tsv")).audio_path(3)
    with open(bad, "w") as f:
        f.write("not audio")
    result = pack(manifests, folder / "packed")
    return manifests, str(folder / "packed"), result


def labelled_task(data):
    cfg = LabelledAudioConfig(data=data, seed=3, train_subset="train", skip_unreadable_clips=True, **CROP)
    task = LogmelAudioClassificationTask(cfg)
    task.load_dataset("train")
    task.load_dataset("valid")
    return task


def test_packing_reports_unreadable_clips_and_fine_tuning_labels_stay_aligned(labelled_with_a_bad_clip):
    manifests, packed, result = labelled_with_a_bad_clip
    assert "train: 19 of 20 clips" in result.stdout and "1 unreadable" in result.stdout
    assert "copied train.labels, labels.txt" in result.stdout
    listed = open(os.path.join(packed, "unreadable.txt")).read().splitlines()
    assert len(listed) == 1 and listed[0].startswith(f"{manifests}/train.tsv:5: cannot read audio file ")
    plain, packed_task = labelled_task(manifests), labelled_task(packed)
    plain_train, packed_train = plain.dataset("train"), packed_task.dataset("train")
    assert len(packed_train) == len(plain_train) - 1 and 3 not in packed_train.audio.line_indices
    labels = read_label_file(os.path.join(manifests, "train.labels"), LabelVocabulary.read(os.path.join(manifests, "labels.txt")), 20, True)
    for epoch in (1, 2):
        plain_train.set_epoch(epoch)
        packed_train.set_epoch(epoch)
        plain_items = {int(plain_train.audio.line_indices[i]): i for i in range(len(plain_train))}
        batch = packed_train.collater(packed_train.__getitems__(list(range(len(packed_train)))))
        for row, index in enumerate(batch["id"].tolist()):
            entry = int(packed_train.audio.line_indices[packed_train.positions[index]])
            assert batch["target"][row].nonzero().flatten().tolist() == labels[entry]
            # The clip left out by packing moves every later item, yet each clip keeps its crop: crops follow the manifest entry.
            same = plain_train[plain_items[entry]]["source"]
            length = len(same)
            assert torch.equal(float_waveform(batch["net_input"]["source"][row, :length]), same)
    # Validation (no clip left out) gives identical batches, targets included.
    assert_same_batches(batches(plain, "valid", 0, 1), batches(packed_task, "valid", 0, 1))


def test_resampled_and_above_full_scale_clips_are_stored_to_16_bits_without_clipping(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(44100) / 44100
    sf.write(str(audio / "a44k.flac"), 0.5 * np.sin(2 * np.pi * 440 * t), 44100)
    sf.write(str(audio / "hot.wav"), (1.5 * np.sin(2 * np.pi * 300 * t[:16000])).astype(np.float32), RATE, subtype="FLOAT")
    write_manifest(str(tmp_path / "train.tsv"), str(audio), [("a44k.flac", 16000), ("hot.wav", 16000)])
    pack(tmp_path / "train.tsv", tmp_path / "packed", jobs="1")
    plain = ManifestAudioDataset(str(tmp_path / "train.tsv"), RATE)
    packed = PackedAudioDataset(str(tmp_path / "packed"), "train", RATE)
    for i in range(2):
        a, b = plain[i]["source"], packed[i]["source"]
        scale = float(packed._scale[i])
        assert a.shape == b.shape and (a - b).abs().max() <= scale / 2 + 1e-7
        if "hot" in plain.audio_path(i):
            assert scale > UNIT_SCALE and b.abs().max() > 1.4, "a float clip above full scale is not clipped"
        else:
            assert scale == UNIT_SCALE
    # A batch holding a clip with a scale of its own is float32 with that clip's values; one without is int16 PCM.
    hot = [i for i in range(2) if "hot" in plain.audio_path(i)]
    for items, dtype in ((range(2), torch.float32), ([i for i in range(2) if i not in hot], torch.int16)):
        batch = packed.collater(packed.__getitems__(list(items)))["net_input"]["source"]
        assert batch.dtype == dtype
        for row, i in enumerate(items):
            assert torch.equal(float_waveform(batch[row]), packed[i]["source"])


# --- damaged corpora ----------------------------------------------------------------------------------


def damaged_copy(packed, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(packed, copy)
    return copy, json.load(open(os.path.join(copy, "train.pack.json")))


def check(folder):
    return logmel_pack("--check", folder)


def test_a_truncated_shard_is_named_when_the_corpus_is_opened_and_by_check(corpus, tmp_path):
    copy, meta = damaged_copy(corpus[1], tmp_path)
    shard = os.path.join(copy, meta["shards"][1]["file"])
    with open(shard, "r+b") as f:
        f.truncate(meta["shards"][1]["bytes"] - 100)
    with pytest.raises(PackedCorpusError, match=rf"{shard} is truncated: \d+ bytes, {copy}/train.pack.json says \d+\. Copy the file again"):
        PackedAudioDataset(copy, "train", RATE, **CROP)
    result = check(copy)
    assert result.status == 1 and f"{shard} is truncated" in result.stdout


def test_a_shard_truncated_while_training_reads_it_is_named_in_the_error(corpus, tmp_path):
    copy, meta = damaged_copy(corpus[1], tmp_path)
    dataset = PackedAudioDataset(copy, "train", RATE, **CROP)
    last = len(meta["shards"]) - 1
    shard = os.path.join(copy, meta["shards"][last]["file"])
    items = [i for i in range(len(dataset)) if dataset.crop_slice(i).shard == last]
    samples = dataset.__getitems__(items)
    # Read once (the shard opened), then cut its samples off, as a copy still in progress or a full disk would.
    dataset.collater(samples)
    with open(shard, "r+b") as f:
        f.truncate(HEADER_BYTES)
    with pytest.raises(PackedCorpusError, match=rf"{shard} ends at byte \d+, before sample \d+: truncated since it was opened\. Copy the file again"):
        dataset.collater(samples)


def test_a_corrupt_shard_is_named_with_its_damaged_clips(corpus, tmp_path):
    copy, meta = damaged_copy(corpus[1], tmp_path)
    index = np.load(os.path.join(copy, "train.index.npy"))
    # The first clip is among the clips whose CRC-32 is checked when the dataset is built.
    first = index[0]
    shard = os.path.join(copy, meta["shards"][int(first["shard"])]["file"])
    with open(shard, "r+b") as f:
        f.seek(128 + 2 * (int(first["offset"]) + 100))
        f.write(b"\x7f" * 64)
    line = f"{corpus[0]}/train.tsv:{int(first['entry']) + 2}"
    with pytest.raises(PackedCorpusError, match=rf"1 of \d+ probed clips are corrupt:\n{line}: .*packed in {shard} \(samples"):
        PackedAudioDataset(copy, "train", RATE, **CROP)
    result = check(copy)
    assert result.status == 1
    assert f"{shard} is corrupt: its samples' CRC-32 differs" in result.stdout and "1 of " in result.stdout
    assert f"  {line}: " in result.stdout, "the damaged clip is named by its manifest line"
    # A header that no longer describes the shard is caught when the corpus is opened.
    with open(shard, "r+b") as f:
        f.seek(20)
        f.write(b"<f4")
    with pytest.raises(PackedCorpusError, match=rf"{shard} is corrupt: its .npy header"):
        PackedAudioDataset(copy, "train", RATE, **CROP)


# --- the pack command: resume after SIGKILL -----------------------------------------------------------

HANG_ON_ENTRY = textwrap.dedent(
    """
    import sys, time
    import fairseq_logmel_conformer.data.packed as packed
    manifest, out, hang_at, flag = sys.argv[1:]
    read_audio = packed.read_audio
    def read(path, rate):
        if path.endswith(hang_at):
            open(flag, "w").close()
            time.sleep(600)
        return read_audio(path, rate)
    packed.read_audio = read
    packed.pack_split(manifest, out, "train", jobs=1, shard_mb=float({shard_mb}))
    """
)


def test_pack_killed_mid_way_resumes_and_writes_what_an_uninterrupted_run_writes(corpus, tmp_path):
    manifests, reference = corpus
    manifest = os.path.join(manifests, "train.tsv")
    out, flag = str(tmp_path / "packed"), str(tmp_path / "reached")
    hang_at = read_manifest(manifest).files[16]
    process = subprocess.Popen(
        [sys.executable, "-c", HANG_ON_ENTRY.format(shard_mb=SHARD_MB), manifest, out, hang_at, flag],
        env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while not os.path.exists(flag) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, process.stdout.read().decode()[-3000:]
    written = sorted(os.listdir(out))
    finished = [name for name in written if name.endswith(".npy") and name[6:11].isdigit()]
    assert finished and any(name.endswith(".npy.partial") for name in written), written
    assert "train.pack.json" not in written, "a killed run must not leave a split a reader would trust"

    result = pack(manifest, out, jobs="1")
    assert f"packed into {len(json.load(open(os.path.join(reference, 'train.pack.json')))['shards'])} shards, {len(finished)} of them kept from an interrupted run" in result.stdout
    assert not any(name.endswith(".partial") or name.endswith(".packing") for name in os.listdir(out))
    for name in os.listdir(reference):
        if name.startswith("train.") and name.endswith(".npy"):
            assert open(os.path.join(out, name), "rb").read() == open(os.path.join(reference, name), "rb").read(), name
    again = pack(manifest, out, jobs="1")
    assert "train: already packed" in again.stdout


# --- training on a packed corpus -------------------------------------------------------------------------


def test_training_on_a_packed_corpus_logs_what_the_manifests_give_and_resumes_mid_epoch_exactly(tmp_path):
    """pretrain_tiny, 4 clips a batch (test_resume's settings): the manifests' run of 8 updates against a packed
    run of 4 (read by a loader worker) resumed from its mid-epoch checkpoint_last.pt to 8."""
    corpus = write_labelled_corpus(str(tmp_path / "audio"), num_train=64, num_valid=4, seconds=(1.0, 1.5), seed=5)
    pack(corpus, tmp_path / "packed")
    # The learning rate decays to zero at lr_scheduler.total_num_update, max_update unless set: every run decays over 8.
    crops = ["task.max_sample_size=16000", "+lr_scheduler.total_num_update=8", *TRAINING]
    (tmp_path / "plain").mkdir()
    (tmp_path / "run").mkdir()
    plain = logged_updates(hydra_train("pretrain_tiny", str(tmp_path / "plain"), f"task.data={corpus}", "optimization.max_update=8", *crops).stdout)
    assert sorted(plain) == list(range(1, 9))
    packed = [f"task.data={tmp_path}/packed", "dataset.num_workers=1", *crops]
    first = logged_updates(hydra_train("pretrain_tiny", str(tmp_path / "run"), "optimization.max_update=4", *packed).stdout)
    assert first == {update: plain[update] for update in range(1, 5)}
    result = hydra_train("pretrain_tiny", str(tmp_path / "run"), "optimization.max_update=8", *packed)
    assert "(epoch 1 @ 4 updates)" in result.stdout, "did not resume from checkpoint_last.pt"
    resumed = logged_updates(result.stdout)
    assert resumed == {update: plain[update] for update in range(5, 9)}


def test_fine_tuning_runs_end_to_end_on_a_packed_folder(labelled_with_a_bad_clip, tmp_path):
    _, packed, _ = labelled_with_a_bad_clip
    hydra_train(
        "finetune_esc50", str(tmp_path), f"task.data={packed}", "model.pretrained_path=null", "+encoder=tiny",
        "optimization.max_update=4", "dataset.batch_size=4", "dataset.num_workers=1", "common.log_interval=1",
    )
    with open(os.path.join(tmp_path, "run", "hydra_train.log")) as f:
        valid = [json.loads(line.split(" - ", 1)[1]) for line in f if "][valid][" in line]
    assert valid and 0 <= float(valid[-1]["valid_accuracy"]) <= 100


# --- the manifest index: arrays, not Python objects ----------------------------------------------------


def test_manifest_index_keeps_the_list_api_and_both_parsers_agree(tmp_path):
    path = str(tmp_path / "train.tsv")
    entries = ["a.wav\t16000", "dir with space/b é.flac\t123456789012", "c.ogg\t0"]
    with open(path, "w") as f:
        f.write("/root\n" + "\n".join(entries) + "\n")
    manifest = read_manifest(path)
    slow = _read_manifest_lines(path, open(path).read(), "/root", None)
    assert isinstance(manifest.files, PathList) and manifest.files == slow.files == ["a.wav", "dir with space/b é.flac", "c.ogg"]
    assert manifest.sizes.dtype == np.int64 and manifest.sizes.tolist() == slow.sizes.tolist() == [16000, 123456789012, 0]
    assert manifest.files[1:] == ["dir with space/b é.flac", "c.ogg"] and list(manifest.files)[-1] == "c.ogg" and len(manifest) == 3
    assert manifest.audio_path(1) == "/root/dir with space/b é.flac" and manifest.location(2) == f"{path}:4"
    # Lines the array parser does not take (Windows line ends) go through the line-by-line one, with the same result.
    with open(path, "w", newline="") as f:
        f.write("/root\r\n" + "\r\n".join(entries) + "\r\n")
    assert read_manifest(path).files == manifest.files and read_manifest(path).sizes.tolist() == manifest.sizes.tolist()
    built = Manifest(path, "/root", ["x.wav"], [5])
    assert built.files == ["x.wav"] and built.sizes.tolist() == [5]

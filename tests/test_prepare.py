"""``logmel-prepare``: tiny releases of each dataset in its official format -> manifest folders, checked line by line."""
import csv
import math
import os

import numpy as np
import pytest
import soundfile as sf

from fairseq_logmel_conformer.data.manifest import read_manifest
from fairseq_logmel_conformer.data.labels import LabelVocabulary, read_label_file
from fairseq_logmel_conformer.prepare import audioset, esc50, kinetics700, magnatagatune
from fairseq_logmel_conformer.prepare.cli import main
from fairseq_logmel_conformer.prepare.common import check_label_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The real release sits beside the checkout (../shared/data), on the developers' machines and in CI.
SHARED_ESC50 = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "esc50")


def edit_esc50_metadata(folder, old, new, count=-1):
    """Replace ``old`` by ``new`` in ``folder``/meta/esc50.csv (``count`` times; -1: everywhere)."""
    path = os.path.join(folder, "meta", "esc50.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace(old, new, count))


def write_tone(path, seconds=0.25, rate=16000, channels=1, fmt=None):
    """A sine tone of ``seconds``; returns its length at 16 kHz."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    frames = int(seconds * rate)
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(frames) / rate).astype(np.float32)
    sf.write(path, np.stack([wave] * channels, axis=1), rate, format=fmt)
    return math.ceil(sf.info(path).frames * 16000 / rate)


def read_split(folder, split):
    """-> (root, [(relative path, num samples, labels line)], missing report lines)."""
    with open(os.path.join(folder, f"{split}.tsv")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(folder, f"{split}.labels")) as f:
        labels = f.read().split("\n")[:-1]
    assert len(labels) == len(lines) - 1, f"{split}.labels has {len(labels)} lines for {len(lines) - 1} manifest entries"
    entries = []
    for line, label_line in zip(lines[1:], labels):
        relative, size = line.split("\t")
        entries.append((relative, int(size), label_line))
    with open(os.path.join(folder, f"{split}_missing.txt")) as f:
        missing = f.read().splitlines()
    return lines[0], entries, missing


def load_with_task_readers(folder, split, single_label):
    """The fine-tuning tasks' own readers must accept the folder: -> class indices per clip."""
    manifest = read_manifest(os.path.join(folder, f"{split}.tsv"))
    vocabulary = LabelVocabulary.read(os.path.join(folder, "labels.txt"))
    return read_label_file(os.path.join(folder, f"{split}.labels"), vocabulary, len(manifest.files), single_label)


def read_vocabulary(folder):
    with open(os.path.join(folder, "labels.txt")) as f:
        return f.read().splitlines()


def run(argv, capsys=None):
    code = main(argv + ["--jobs", "1"])
    assert code == 0
    return capsys.readouterr().out if capsys else None


# ----------------------------------------------------------------------------- ESC-50

ESC_CLASSES = {2: ("rain", False), 0: ("dog", True), 1: ("rooster", True)}


def make_esc50(root, missing=("3-0003-A-2.wav",)):
    """Two clips per fold, classes listed out of target order; the ``missing`` files are not written."""
    rows, sizes = [], {}
    for fold in range(1, 6):
        for take, target in enumerate((2, 0) if fold % 2 else (1, 2)):
            category, is_esc10 = ESC_CLASSES[target]
            name = f"{fold}-000{fold}-{'AB'[take]}-{target}.wav"
            rows.append([name, fold, target, category, is_esc10, f"000{fold}", "AB"[take]])
            if name not in missing:
                sizes[name] = write_tone(os.path.join(root, "audio", name), seconds=0.1 + 0.01 * fold)
    os.makedirs(os.path.join(root, "meta"))
    with open(os.path.join(root, "meta", "esc50.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        writer.writerows(rows)
    return rows, sizes


def test_esc50_folds(tmp_path, capsys):
    rows, sizes = make_esc50(str(tmp_path / "ESC-50-master"))
    out = str(tmp_path / "out")
    stdout = run(["esc50", str(tmp_path / "ESC-50-master"), "--out", out], capsys)
    assert "1 missing" in stdout
    for held_out in range(1, 6):
        folder = os.path.join(out, f"fold{held_out}")
        assert read_vocabulary(folder) == ["dog", "rooster", "rain"]
        for split, in_split in (("valid", lambda fold: fold == held_out), ("train", lambda fold: fold != held_out)):
            root, entries, missing = read_split(folder, split)
            assert root == os.path.realpath(str(tmp_path / "ESC-50-master" / "audio"))
            expected = [(name, sizes[name], category) for name, fold, _, category, *_ in rows if in_split(fold) and name in sizes]
            assert entries == expected
            expect_missing = split == ("valid" if held_out == 3 else "train")
            assert [line.split("\t")[0] for line in missing] == (["3-0003-A-2.wav"] if expect_missing else [])
            if expect_missing:
                assert missing[0].split("\t")[1].startswith("not found: ")
            classes = load_with_task_readers(folder, split, single_label=True)
            assert classes == [[["dog", "rooster", "rain"].index(e[2])] for e in entries]


def test_esc10_subset(tmp_path):
    make_esc50(str(tmp_path / "esc"), missing=())
    out = str(tmp_path / "out")
    run(["esc50", str(tmp_path / "esc"), "--out", out, "--esc10"])
    assert read_vocabulary(os.path.join(out, "fold1")) == ["dog", "rooster"]
    _, entries, _ = read_split(os.path.join(out, "fold2"), "valid")
    assert [e[0] for e in entries] == ["2-0002-A-1.wav"]
    assert {e[2] for fold in range(1, 6) for e in read_split(os.path.join(out, f"fold{fold}"), "train")[1]} == {"dog", "rooster"}


def test_esc50_inconsistent_target_fails(tmp_path, capsys):
    folder = str(tmp_path / "esc")
    make_esc50(folder, missing=())
    edit_esc50_metadata(folder, ",0,dog,", ",0,cat,", count=1)
    assert main(["esc50", folder, "--out", str(tmp_path / "out"), "--jobs", "1"]) == 1
    assert "target 0 is 'dog' here but 'cat' earlier" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_ESC50, "meta", "esc50.csv")), reason="no shared ESC-50")
def test_esc50_real_release(tmp_path):
    dataset = SHARED_ESC50
    categories, rows = esc50.read_metadata(os.path.join(dataset, "meta", "esc50.csv"), esc10=False)
    assert len(categories) == 50 and len(rows) == 2000
    esc10_categories, esc10_rows = esc50.read_metadata(os.path.join(dataset, "meta", "esc50.csv"), esc10=True)
    assert len(esc10_categories) == 10 and len(esc10_rows) == 400 and set(esc10_categories) < set(categories)
    out = str(tmp_path / "out")
    run(["esc50", dataset, "--out", out])
    category_of = {name: category for _, name, category in rows}
    seen_valid = []
    for fold in range(1, 6):
        folder = os.path.join(out, f"fold{fold}")
        assert read_vocabulary(folder) == categories
        _, valid, valid_missing = read_split(folder, "valid")
        _, train, train_missing = read_split(folder, "train")
        assert len(valid) == 400 and len(train) == 1600 and not valid_missing and not train_missing
        assert {e[0] for e in valid}.isdisjoint(e[0] for e in train)
        assert all(e[0].startswith(f"{fold}-") and category_of[e[0]] == e[2] for e in valid)
        seen_valid.extend(e[0] for e in valid)
    assert sorted(seen_valid) == sorted(category_of)
    # The first category in target order is ESC-50's class 0.
    assert categories[0] == "dog"


# ----------------------------------------------------------------------------- AudioSet

AUDIOSET_CLASSES = [("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/m/0ytgt", "Child speech"), ("/m/0brhx", "Bark")]


def write_segments(path, rows):
    with open(path, "w") as f:
        f.write("# Segments csv created Sun Mar  5 10:54:31 2017\n")
        f.write(f"# num_ytids={len(rows)}, num_segs={len(rows)}, num_unique_labels=4, num_positive_labels=5\n")
        f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
        for ytid, start, end, labels in rows:
            f.write(f'{ytid}, {start}, {end}, "{labels}"\n')


@pytest.fixture
def audioset_release(tmp_path):
    meta = tmp_path / "audioset"
    audio = tmp_path / "audioset_audio"
    meta.mkdir()
    with open(meta / "class_labels_indices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        writer.writerows([index, mid, name] for index, (mid, name) in enumerate(AUDIOSET_CLASSES))
    balanced = [("--PJHxphWEs", "30.000", "40.000", "/m/09x0r,/m/05zppz"), ("-0SdAVK79lg", "0.000", "10.000", "/m/0brhx")]
    unbalanced = [("aaaaaaaaaaa", "5.000", "15.000", "/m/0ytgt"), ("bbbbbbbbbbb", "1.500", "11.500", "/m/09x0r")]
    evaluation = [("ccccccccccc", "20.000", "30.000", "/m/0brhx,/m/09x0r"), ("ddddddddddd", "0.000", "10.000", "/m/0ytgt")]
    write_segments(meta / "balanced_train_segments.csv", balanced)
    write_segments(meta / "unbalanced_train_segments.csv", unbalanced)
    write_segments(meta / "eval_segments.csv", evaluation)
    sizes = {
        # Start times written as downloaders do: with 3, 1 or no decimals.
        "--PJHxphWEs": ("bal/--PJHxphWEs_30.000.wav", write_tone(str(audio / "bal/--PJHxphWEs_30.000.wav"), 0.2)),
        "-0SdAVK79lg": ("bal/-0SdAVK79lg_0.wav", write_tone(str(audio / "bal/-0SdAVK79lg_0.wav"), 0.3, rate=32000)),
        "aaaaaaaaaaa": ("unbal/part0/aaaaaaaaaaa_5.0.wav", write_tone(str(audio / "unbal/part0/aaaaaaaaaaa_5.0.wav"), 0.15)),
        "ccccccccccc": ("eval/ccccccccccc_20.wav", write_tone(str(audio / "eval/ccccccccccc_20.wav"), 0.2)),
        "ddddddddddd": ("eval/ddddddddddd_0.wav", write_tone(str(audio / "eval/ddddddddddd_0.wav"), 0.2)),
    }
    # A download of the same video at another start time must not be taken for the listed segment.
    write_tone(str(audio / "unbal/bbbbbbbbbbb_2.wav"), 0.2)
    # Two copies of one eval segment: ambiguous, so reported rather than guessed.
    write_tone(str(audio / "eval/copy/ddddddddddd_0.000.wav"), 0.2)
    return str(meta), str(audio), sizes, balanced, unbalanced, evaluation


def test_audioset_balanced_and_full(tmp_path, audioset_release, capsys):
    meta, audio, sizes, balanced, unbalanced, evaluation = audioset_release
    out = str(tmp_path / "out")
    run(["audioset", meta, "--audio-dir", audio, "--out", out], capsys)
    expected_vocabulary = [f"{mid}\t{name}" for mid, name in AUDIOSET_CLASSES]

    def expected(rows):
        return [(*sizes[ytid], labels) for ytid, _, _, labels in rows if ytid in sizes and ytid != "ddddddddddd"]

    for subset, train_rows in (("balanced", balanced), ("full", balanced + unbalanced)):
        folder = os.path.join(out, f"audioset_{subset}")
        assert read_vocabulary(folder) == expected_vocabulary
        root, train, train_missing = read_split(folder, "train")
        assert root == os.path.realpath(audio)
        assert train == expected(train_rows)
        assert [line.split("\t")[0] for line in train_missing] == (["bbbbbbbbbbb_1.500"] if subset == "full" else [])
        _, valid, valid_missing = read_split(folder, "valid")
        assert valid == expected(evaluation)
        assert len(valid_missing) == 1 and valid_missing[0].startswith("ddddddddddd_0.000\tambiguous: 2 files")
        assert load_with_task_readers(folder, "valid", single_label=False) == [[3, 0]]
        assert LabelVocabulary.read(os.path.join(folder, "labels.txt")).display_names[1] == "Male speech, man speaking"


def test_audioset_pattern_without_times(tmp_path, audioset_release):
    meta, audio, *_ = audioset_release
    os.rename(os.path.join(audio, "bal", "--PJHxphWEs_30.000.wav"), os.path.join(audio, "bal", "Y--PJHxphWEs.wav"))
    out = str(tmp_path / "out")
    run(["audioset", meta, "--audio-dir", audio, "--out", out, "--filename-pattern", "**/Y{ytid}.wav", "--subsets", "balanced"])
    assert not os.path.exists(os.path.join(out, "audioset_full"))
    _, train, missing = read_split(os.path.join(out, "audioset_balanced"), "train")
    assert [e[0] for e in train] == ["bal/Y--PJHxphWEs.wav"]
    assert [line.split("\t")[0] for line in missing] == ["-0SdAVK79lg_0.000"]


def test_audioset_pattern_regex():
    regex = audioset.pattern_to_regex("**/{ytid}_{start}-{end}.*")
    match = regex.fullmatch("a/b/--PJHxphWEs_30.5-40.flac")
    assert match and match.group("ytid") == "--PJHxphWEs" and match.group("start") == "30.5" and match.group("end") == "40"
    assert regex.fullmatch("--PJHxphWEs_30-40.wav")
    assert not regex.fullmatch("short_30-40.wav")
    with pytest.raises(ValueError, match="unknown placeholder"):
        audioset.pattern_to_regex("{youtube_id}.wav")
    with pytest.raises(ValueError, match="must contain"):
        audioset.pattern_to_regex("{start}.wav")


# ----------------------------------------------------------------------------- FSDKaggle2019


def test_fsdkaggle2019(tmp_path, capsys):
    release = tmp_path / "FSDKaggle2019"
    release.mkdir()
    subsets = {
        "curated": ("train_curated.csv", "FSDKaggle2019.audio_train_curated", [("c1.wav", "Bark"), ("c2.wav", "Accordion,Bark")]),
        "noisy": (
            "train_noisy.csv",
            "FSDKaggle2019.audio_train_noisy",
            [("n1.wav", "Zipper_(clothing)"), ("n2.wav", "Bark"), ("n3.wav", "Accordion")],
        ),
        "test": ("test_post_competition.csv", "FSDKaggle2019.audio_test", [("t1.wav", "Bark,Zipper_(clothing)"), ("t2.wav", "Accordion")]),
    }
    sizes = {}
    for subset, (csv_name, folder, rows) in subsets.items():
        with open(release / csv_name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["fname", "labels"] + (["usage"] if subset == "test" else []))
            writer.writerows([fname, labels] + (["Public"] if subset == "test" else []) for fname, labels in rows)
        for fname, _ in rows:
            if fname == "n2.wav":
                continue
            path = str(release / folder / fname)
            if fname == "n3.wav":
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(b"not audio")
            else:
                sizes[fname] = (f"{folder}/{fname}", write_tone(path, 0.2, rate=44100))
    out = str(tmp_path / "out")
    stdout = run(["fsdkaggle2019", str(release), "--out", out], capsys)
    assert "2 missing" in stdout
    vocabulary = ["Accordion", "Bark", "Zipper_(clothing)"]

    def expected(subset):
        return [(*sizes[fname], labels) for fname, labels in subsets[subset][2] if fname in sizes]

    for name, train in (("curated", expected("curated")), ("noisy", expected("curated") + expected("noisy"))):
        folder = os.path.join(out, f"fsdkaggle2019_{name}")
        assert read_vocabulary(folder) == vocabulary
        root, entries, missing = read_split(folder, "train")
        assert root == os.path.realpath(str(release))
        assert entries == train
        if name == "noisy":
            reasons = dict(line.split("\t", 1) for line in missing)
            assert sorted(reasons) == ["n2.wav", "n3.wav"]
            assert reasons["n2.wav"].startswith("not found") and reasons["n3.wav"].startswith("unreadable")
        for split in ("valid", "test"):
            assert read_split(folder, split)[1] == expected("test")
        assert load_with_task_readers(folder, "test", single_label=False) == [[1, 2], [0]]


# ----------------------------------------------------------------------------- DCASE2019 task 1a


def make_dcase(root):
    scenes = {
        "audio/airport-barcelona-0-0-a.wav": "airport",
        "audio/park-lyon-1-5-a.wav": "park",
        "audio/bus-helsinki-2-3-a.wav": "bus",
        "audio/airport-paris-4-1-a.wav": "airport",
        "audio/park-vienna-3-2-a.wav": "park",
        "audio/bus-milan-0-1-a.wav": "bus",
    }
    os.makedirs(os.path.join(root, "evaluation_setup"))
    with open(os.path.join(root, "meta.csv"), "w") as f:
        f.write("filename\tscene_label\tidentifier\tsource_label\n")
        for name, scene in scenes.items():
            f.write(f"{name}\t{scene}\t{name.split('-')[1]}-0\ta\n")
    names = list(scenes)
    folds = {"fold1_train.csv": names[:3], "fold1_evaluate.csv": names[3:5]}
    for csv_name, fold_names in folds.items():
        with open(os.path.join(root, "evaluation_setup", csv_name), "w") as f:
            f.write("filename\tscene_label\n")
            f.writelines(f"{name}\t{scenes[name]}\n" for name in fold_names)
    sizes = {}
    for name in names[:4]:
        # TAU clips are 48 kHz stereo.
        sizes[name] = write_tone(os.path.join(root, name), 0.1, rate=48000, channels=2)
    write_tone(os.path.join(root, names[2]), 0.05, rate=16000)
    return scenes, folds, sizes


def test_dcase2019_1a(tmp_path):
    root = str(tmp_path / "TAU-urban-acoustic-scenes-2019-development")
    scenes, folds, sizes = make_dcase(root)
    out = str(tmp_path / "out")
    run(["dcase2019_1a", root, "--out", out])
    assert read_vocabulary(out) == ["airport", "bus", "park"]
    manifest_root, train, train_missing = read_split(out, "train")
    assert manifest_root == os.path.realpath(root)
    names = folds["fold1_train.csv"]
    assert train == [(names[0], 1600, "airport"), (names[1], 1600, "park")]
    assert load_with_task_readers(out, "train", single_label=True) == [[0], [2]]
    assert len(train_missing) == 1 and train_missing[0].startswith(f"{names[2]}\ttoo short: 800 samples")
    _, valid, valid_missing = read_split(out, "valid")
    assert valid == [(folds["fold1_evaluate.csv"][0], 1600, "airport")]
    assert [line.split("\t")[0] for line in valid_missing] == [folds["fold1_evaluate.csv"][1]]


def test_dcase2019_label_disagreement_fails(tmp_path, capsys):
    root = str(tmp_path / "dcase")
    make_dcase(root)
    path = os.path.join(root, "evaluation_setup", "fold1_train.csv")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("\tpark\n", "\tbus\n"))
    assert main(["dcase2019_1a", root, "--out", str(tmp_path / "out"), "--jobs", "1"]) == 1
    assert "is 'bus' here but 'park' in meta.csv" in capsys.readouterr().err


# ----------------------------------------------------------------------------- MagnaTagATune

MTAT_TAGS = [f"tag {i:02d}" for i in range(55)]


def make_magnatagatune(root):
    """One clip per folder 0 ... f plus a missing one in d; tag counts make the top-50 choice checkable.

    ``tag 54`` is on 5 clips (most frequent); ``tag 00`` ... ``tag 49`` are on one clip each, a 50-way tie of
    which column order keeps the first 49; ``tag 50`` ... ``tag 53`` are on none. Clip 9 has only ``tag 49``.
    """
    others = [index for index in range(17) if index != 9]
    positives = {index: set() for index in range(17)}
    for tag in range(49):
        positives[others[tag % 16]].add(tag)
    for index in range(5):
        positives[index].add(54)
    positives[9] = {49}
    rows, sizes = [], {}
    for index in range(17):
        folder = "0123456789abcdefd"[index]
        mp3_path = f"{folder}/artist-album-{index:02d}-song-0-29.mp3"
        rows.append([str(index), *("1" if t in positives[index] else "0" for t in range(55)), mp3_path])
        if index != 16:
            path = os.path.join(root, mp3_path)
            write_tone(path, 0.3, fmt="MP3")
            sizes[mp3_path] = sf.info(path).frames
    with open(os.path.join(root, "annotations_final.csv"), "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
        writer.writerow(["clip_id", *MTAT_TAGS, "mp3_path"])
        writer.writerows(rows)
    return rows, positives, sizes


def test_magnatagatune_top50_and_split(tmp_path, capsys):
    root = str(tmp_path / "mtat")
    os.makedirs(root)
    rows, positives, sizes = make_magnatagatune(root)
    out = str(tmp_path / "out")
    stdout = run(["magnatagatune", root, "--out", out], capsys)
    vocabulary = read_vocabulary(out)
    assert vocabulary == ["tag 54"] + [f"tag {i:02d}" for i in range(49)]
    assert "1 clips with none of the 50 tags kept" in stdout
    split_of = {"train": "0123456789ab", "valid": "c", "test": "def"}
    for split, folders in split_of.items():
        manifest_root, entries, missing = read_split(out, split)
        assert manifest_root == os.path.realpath(root)
        expected = []
        for index, row in enumerate(rows):
            if row[-1][0] in folders and row[-1] in sizes:
                labels = [tag for tag in vocabulary if MTAT_TAGS.index(tag) in positives[index]]
                expected.append((row[-1], sizes[row[-1]], ",".join(labels)))
        assert entries == expected
        assert [line.split("\t")[0] for line in missing] == (["d/artist-album-16-song-0-29.mp3"] if split == "test" else [])
    train = read_split(out, "train")[1]
    assert train[9] == ("9/artist-album-09-song-0-29.mp3", sizes["9/artist-album-09-song-0-29.mp3"], "")
    assert load_with_task_readers(out, "train", single_label=False)[9] == []
    assert train[0][2] == "tag 54,tag 00,tag 16,tag 32,tag 48"


def test_magnatagatune_drop_untagged(tmp_path):
    root = str(tmp_path / "mtat")
    os.makedirs(root)
    make_magnatagatune(root)
    out = str(tmp_path / "out")
    run(["magnatagatune", root, "--out", out, "--drop-untagged"])
    train = read_split(out, "train")[1]
    assert len(train) == 11 and all(e[2] for e in train)
    with open(os.path.join(out, "train_untagged.txt")) as f:
        assert f.read().splitlines() == ["9/artist-album-09-song-0-29.mp3"]


def test_magnatagatune_top_tags_needs_enough_columns():
    with pytest.raises(ValueError, match="at least 50 tag columns, got 3"):
        magnatagatune.top_tags(["a", "b", "c"], [], 50)


# ----------------------------------------------------------------------------- Kinetics-700


def write_video(path, seconds=1.0, audio_rate=44100, with_audio=True):
    """A tiny MPEG-4 video with (optionally) a stereo AAC 440 Hz tone."""
    av = pytest.importorskip("av")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        audio = container.add_stream("aac", rate=audio_rate, layout="stereo") if with_audio else None
        for index in range(int(10 * seconds)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), index * 20, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if audio is not None:
            count = int(audio_rate * seconds)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(count) / audio_rate)).astype(np.float32)
            for start in range(0, count, 1024):
                chunk = np.ascontiguousarray(np.stack([tone[start : start + 1024]] * 2))
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
                frame.sample_rate, frame.pts = audio_rate, start
                for packet in audio.encode(frame):
                    container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)


def test_kinetics_extract_audio_track(tmp_path):
    video = str(tmp_path / "clip.mp4")
    write_video(video, seconds=1.0, audio_rate=44100)
    flac = str(tmp_path / "audio" / "clip.flac")
    assert kinetics700.extract_audio(video, flac) is None
    samples, rate = sf.read(flac)
    assert rate == 16000 and samples.ndim == 1 and sf.info(flac).format == "FLAC"
    # AAC adds encoder delay and padding of up to a few frames.
    assert 16000 <= len(samples) <= 16000 + 3 * 1024
    spectrum = np.abs(np.fft.rfft(samples[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 5
    # Identical channels of amplitude 0.3 average to amplitude 0.3 (AAC is lossy, hence the tolerance).
    assert abs(np.abs(samples[2000:14000]).max() - 0.3) < 0.03
    silent = str(tmp_path / "silent.mp4")
    write_video(silent, with_audio=False)
    assert kinetics700.extract_audio(silent, str(tmp_path / "audio" / "silent.flac")) == f"no audio track in {silent}"
    assert not os.path.exists(tmp_path / "audio" / "silent.flac")


def test_kinetics700(tmp_path, capsys):
    pytest.importorskip("av")
    dataset, videos = tmp_path / "kinetics700", tmp_path / "videos"
    dataset.mkdir()
    train = [
        ("abseiling", "---QUuC4vJs", 3, 13),
        ("playing guitar", "-0ABcdEFgh1", 0, 10),
        ("abseiling", "noaudio0001", 5, 15),
        ("playing guitar", "missing0001", 1, 11),
    ]
    valid = [("playing guitar", "valid000001", 12, 22)]
    for name, rows, split in (("train.csv", train, "train"), ("validate.csv", valid, "validate")):
        with open(dataset / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            writer.writerows([label, ytid, start, end, split] for label, ytid, start, end in rows)
    for label, ytid, start, end in train[:3] + valid:
        write_video(str(videos / label / f"{ytid}_{start:06d}_{end:06d}.mp4"), seconds=0.5, with_audio=ytid != "noaudio0001")
    out = str(tmp_path / "out")
    # Two processes: the extraction jobs must come back to the right rows.
    assert main(["kinetics700", str(dataset), "--video-dir", str(videos), "--out", out, "--jobs", "2"]) == 0
    assert "2 missing" in capsys.readouterr().out
    assert read_vocabulary(out) == ["abseiling", "playing guitar"]
    audio_root, entries, missing = read_split(out, "train")
    assert audio_root == os.path.realpath(os.path.join(out, "audio"))
    assert [(e[0], e[2]) for e in entries] == [
        ("abseiling/---QUuC4vJs_000003_000013.flac", "abseiling"),
        ("playing guitar/-0ABcdEFgh1_000000_000010.flac", "playing guitar"),
    ]
    assert all(e[1] == sf.info(os.path.join(audio_root, e[0])).frames for e in entries)
    assert load_with_task_readers(out, "train", single_label=True) == [[0], [1]]
    reasons = dict(line.split("\t", 1) for line in missing)
    assert reasons["noaudio0001_000005_000015"].startswith("no audio track in ")
    assert reasons["missing0001_000001_000011"].startswith("not found: ")
    assert [e[0] for e in read_split(out, "valid")[1]] == ["playing guitar/valid000001_000012_000022.flac"]
    # A second run reuses the extracted audio, so the videos are no longer needed.
    before = {split: read_split(out, split) for split in ("train", "valid")}
    for label, ytid, start, end in train[:2] + valid:
        os.remove(videos / label / f"{ytid}_{start:06d}_{end:06d}.mp4")
    run(["kinetics700", str(dataset), "--video-dir", str(videos), "--out", out])
    assert {split: read_split(out, split) for split in ("train", "valid")} == before


def test_kinetics_pattern_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,3.5,13,train\n")
    with pytest.raises(ValueError, match="not a whole number"):
        kinetics700.read_split(str(path), kinetics700.DEFAULT_PATTERN)
    path.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc,3,13,train\n")
    with pytest.raises(ValueError, match="placeholders are"):
        kinetics700.read_split(str(path), "{video_id}.mp4")
    rows = kinetics700.read_split(str(path), "{split}/{label}/{youtube_id}.mkv")
    assert rows == [("abc_000003_000013", "train/abseiling/abc.mkv", "abseiling")]


# ----------------------------------------------------------------------------- shared rules


@pytest.mark.parametrize("name", ["a,b", "a\tb", " padded", ""])
def test_label_names_that_cannot_be_written_fail(name):
    with pytest.raises(ValueError, match="comma-separated"):
        check_label_name(name, "meta.csv:2")


def test_label_with_comma_fails_the_command(tmp_path, capsys):
    folder = str(tmp_path / "esc")
    make_esc50(folder, missing=())
    edit_esc50_metadata(folder, ",rain,", ',"rain,heavy",')
    assert main(["esc50", folder, "--out", str(tmp_path / "out"), "--jobs", "1"]) == 1
    assert "'rain,heavy'" in capsys.readouterr().err

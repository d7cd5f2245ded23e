"""MagnaTagATune: multi-label music tagging with the 50 most frequent tags.

Input: ``annotations_final.csv`` (TAB-separated, quoted: ``clip_id``, 188 tag
columns of 0/1, ``mp3_path``) and the mp3 folders ``0`` ... ``f``.

The 50 tags with most positive clips over the whole file are kept (ties broken
by column order); ``labels.txt`` lists them by decreasing count. Splits follow
the usual rule on the first character of ``mp3_path`` (its folder): ``0``-``b``
train (12 folders), ``c`` valid, ``d``-``f`` test.

Clips with none of the 50 tags are kept with an empty ``.labels`` line (a clip
with no positive tag) unless ``--drop-untagged`` is given; dropped clips are
listed in ``<split>_untagged.txt`` and counted on stdout.
"""
import argparse
import os
from collections import Counter
from typing import Dict, List, Tuple

from .common import Clip, audio_root, check_label_name, locate, probe, read_csv_dicts, write_folder

NUM_TAGS = 50
SPLIT_OF_FOLDER = {**{c: "train" for c in "0123456789ab"}, "c": "valid", **{c: "test" for c in "def"}}


Row = Tuple[int, str, Dict[str, bool]]


def read_annotations(path: str) -> Tuple[List[str], List[Row]]:
    """-> (tag columns in file order, [(line number, mp3_path, {tag: positive})])."""
    records = read_csv_dicts(path, ("clip_id", "mp3_path"), delimiter="\t")
    if not records:
        raise ValueError(f"{path}: no clips")
    tags = [column for column in records[0][1] if column not in ("clip_id", "mp3_path")]
    for tag in tags:
        check_label_name(tag, f"{path}:1")
    rows = []
    for number, record in records:
        values = {tag: record[tag].strip() for tag in tags}
        bad = {tag: value for tag, value in values.items() if value not in ("0", "1")}
        if bad:
            raise ValueError(f"{path}:{number}: tag columns must be 0 or 1, got {bad}")
        rows.append((number, record["mp3_path"].strip(), {t: v == "1" for t, v in values.items()}))
    return tags, rows


def top_tags(tags: List[str], rows: List[Row], count: int) -> List[str]:
    """The ``count`` tags with most positive clips, by decreasing count, ties in column order."""
    if len(tags) < count:
        raise ValueError(f"need at least {count} tag columns, got {len(tags)}")
    positives = Counter(tag for *_, values in rows for tag, positive in values.items() if positive)
    return sorted(tags, key=lambda tag: (-positives[tag], tags.index(tag)))[:count]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="folder holding annotations_final.csv")
    parser.add_argument(
        "--audio-dir", help="folder holding the mp3 folders 0 ... f (default: DATASET_DIR/mp3 if it exists, else DATASET_DIR)"
    )
    parser.add_argument(
        "--drop-untagged", action="store_true", help="leave out clips with none of the 50 tags (listed in <split>_untagged.txt)"
    )


def prepare(args: argparse.Namespace) -> None:
    """Write OUT/{train,valid,test}.{tsv,labels} and OUT/labels.txt."""
    default_audio = os.path.join(args.dataset_dir, "mp3")
    root = audio_root(args.audio_dir or (default_audio if os.path.isdir(default_audio) else args.dataset_dir))
    csv_path = os.path.join(args.dataset_dir, "annotations_final.csv")
    tags, rows = read_annotations(csv_path)
    vocabulary = top_tags(tags, rows, NUM_TAGS)
    splits: Dict[str, List[Clip]] = {"train": [], "valid": [], "test": []}
    untagged: Dict[str, List[str]] = {split: [] for split in splits}
    for number, mp3_path, values in rows:
        split = SPLIT_OF_FOLDER.get(mp3_path[:1])
        if split is None or mp3_path[1:2] != "/":
            raise ValueError(f"{csv_path}:{number}: mp3_path {mp3_path!r} is not in a folder 0 ... f")
        labels = tuple(tag for tag in vocabulary if values[tag])
        if not labels and args.drop_untagged:
            untagged[split].append(mp3_path)
            continue
        splits[split].append(locate(root, mp3_path, mp3_path, labels))
    probed = probe(root, [clip for clips in splits.values() for clip in clips], args.jobs, args.min_samples)
    write_folder(args.out, root, splits, probed, vocabulary, multi_label=True)
    for split, dropped in untagged.items():
        if args.drop_untagged:
            with open(os.path.join(args.out, f"{split}_untagged.txt"), "w") as f:
                f.writelines(path + "\n" for path in dropped)
            print(f"{args.out}: {split}: {len(dropped)} clips with none of the {NUM_TAGS} tags left out (--drop-untagged)")
        else:
            kept = sum(not clip.labels for clip in splits[split])
            print(f"{args.out}: {split}: {kept} clips with none of the {NUM_TAGS} tags kept with an empty label line")

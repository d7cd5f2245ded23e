"""FSDKaggle2019: multi-label tagging with 80 labels, curated and noisy training sets.

Input: the release folder with the metadata CSVs (``train_curated.csv``,
``train_noisy.csv``, ``test_post_competition.csv``; Zenodo's
``*_post_competition.csv`` names of the train files are found too) and the three
audio folders (``FSDKaggle2019.audio_train_curated`` etc., or the Kaggle names
``train_curated`` etc.). Each CSV has ``fname`` and ``labels`` (comma-separated,
quoted) columns.

Output: ``OUT/fsdkaggle2019_curated`` (train = curated) and
``OUT/fsdkaggle2019_noisy`` (train = curated + noisy). ``valid`` and ``test``
are both the post-competition test set, since the release has no validation
split. ``labels.txt`` is the sorted union of all labels (80). The manifest root
is the common parent of the audio folders.
"""
import argparse
import os
from typing import Dict, List, Optional, Sequence

from .common import Clip, audio_root, locate, probe, read_csv_dicts, split_labels, write_folder

# (subset, metadata file names, audio folder names), the first existing name is used.
SUBSETS = (
    ("curated", ("train_curated.csv", "train_curated_post_competition.csv"), ("FSDKaggle2019.audio_train_curated", "train_curated")),
    ("noisy", ("train_noisy.csv", "train_noisy_post_competition.csv"), ("FSDKaggle2019.audio_train_noisy", "train_noisy")),
    ("test", ("test_post_competition.csv",), ("FSDKaggle2019.audio_test", "test")),
)


def find_existing(folder: str, names: Sequence[str], what: str, kind: str) -> str:
    """First of ``folder/name`` that exists; FileNotFoundError listing every name tried otherwise."""
    for name in names:
        path = os.path.join(folder, name)
        if (os.path.isdir if kind == "dir" else os.path.isfile)(path):
            return path
    raise FileNotFoundError(f"no {what} in {folder}: tried {list(names)}")


def read_subset(csv_path: str, audio_dir: str, root: str) -> List[Clip]:
    """Clips of one metadata CSV, located in ``audio_dir``; paths relative to ``root``."""
    clips = []
    for number, record in read_csv_dicts(csv_path, ("fname", "labels")):
        labels = split_labels(record["labels"], f"{csv_path}:{number}")
        if not labels:
            raise ValueError(f"{csv_path}:{number}: clip {record['fname']} has no labels")
        relative = os.path.relpath(os.path.join(audio_dir, record["fname"].strip()), root)
        clips.append(locate(root, relative, record["fname"].strip(), labels))
    return clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="release folder holding the metadata CSVs and audio folders")
    parser.add_argument("--meta-dir", help="folder of the metadata CSVs (default: DATASET_DIR)")
    for subset, _, folders in SUBSETS:
        parser.add_argument(
            f"--{subset}-audio", help=f"folder of the {subset} clips (default: DATASET_DIR/{folders[0]} or DATASET_DIR/{folders[1]})"
        )


def prepare(args: argparse.Namespace) -> None:
    """Write OUT/fsdkaggle2019_curated and OUT/fsdkaggle2019_noisy."""
    meta_dir = args.meta_dir or args.dataset_dir
    audio_dirs: Dict[str, str] = {}
    csv_paths: Dict[str, str] = {}
    for subset, csv_names, folders in SUBSETS:
        given: Optional[str] = getattr(args, f"{subset}_audio")
        audio_dirs[subset] = audio_root(given or find_existing(args.dataset_dir, folders, f"{subset} audio folder", "dir"))
        csv_paths[subset] = find_existing(meta_dir, csv_names, f"{subset} metadata CSV", "file")
    root = os.path.commonpath(list(audio_dirs.values()))
    clips = {subset: read_subset(csv_paths[subset], audio_dirs[subset], root) for subset in audio_dirs}
    vocabulary = sorted({label for subset_clips in clips.values() for clip in subset_clips for label in clip.labels})
    probed = probe(root, [clip for subset_clips in clips.values() for clip in subset_clips], args.jobs, args.min_samples)
    for name, train in (("curated", clips["curated"]), ("noisy", clips["curated"] + clips["noisy"])):
        splits = {"train": train, "valid": clips["test"], "test": clips["test"]}
        write_folder(os.path.join(args.out, f"fsdkaggle2019_{name}"), root, splits, probed, vocabulary, multi_label=True)
    print(f"FSDKaggle2019: {len(vocabulary)} labels; " + ", ".join(f"{s} {len(c)} clips" for s, c in clips.items()))

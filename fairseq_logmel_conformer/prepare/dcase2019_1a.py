"""DCASE2019 task 1a (TAU Urban Acoustic Scenes 2019, development set): 10 scenes, official fold 1.

Input: the development folder (``TAU-urban-acoustic-scenes-2019-development``)
with ``meta.csv`` (TAB-separated ``filename, scene_label, identifier,
source_label``), ``evaluation_setup/fold1_train.csv`` and
``evaluation_setup/fold1_evaluate.csv`` (TAB-separated ``filename,
scene_label``) and ``audio/``. File names in the CSVs are relative to the
development folder, which is the manifest root.

Output: ``OUT`` with ``train`` = fold1_train and ``valid`` = fold1_evaluate;
``labels.txt`` lists the scene labels of ``meta.csv`` in sorted order.
"""
import argparse
import os
from typing import Dict, List

from .common import Clip, audio_root, check_label_name, locate, probe, read_csv_dicts, write_folder


def read_meta(path: str) -> Dict[str, str]:
    """``meta.csv`` -> {filename: scene label}."""
    scenes = {}
    for number, record in read_csv_dicts(path, ("filename", "scene_label"), delimiter="\t"):
        scenes[record["filename"].strip()] = check_label_name(record["scene_label"].strip(), f"{path}:{number}")
    return scenes


def read_fold(path: str, root: str, scenes: Dict[str, str]) -> List[Clip]:
    """Clips of an evaluation-setup file; its scene labels must agree with ``meta.csv``."""
    clips = []
    for number, record in read_csv_dicts(path, ("filename", "scene_label"), delimiter="\t"):
        filename, scene = record["filename"].strip(), record["scene_label"].strip()
        if scenes.get(filename) != scene:
            raise ValueError(f"{path}:{number}: {filename} is {scene!r} here but {scenes.get(filename)!r} in meta.csv")
        clips.append(locate(root, filename, filename, (scene,)))
    return clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="TAU Urban Acoustic Scenes 2019 development folder (meta.csv, evaluation_setup/, audio/)")


def prepare(args: argparse.Namespace) -> None:
    """Write OUT/{train,valid}.{tsv,labels} and OUT/labels.txt."""
    root = audio_root(args.dataset_dir)
    scenes = read_meta(os.path.join(root, "meta.csv"))
    setup = os.path.join(root, "evaluation_setup")
    splits = {
        "train": read_fold(os.path.join(setup, "fold1_train.csv"), root, scenes),
        "valid": read_fold(os.path.join(setup, "fold1_evaluate.csv"), root, scenes),
    }
    probed = probe(root, splits["train"] + splits["valid"], args.jobs, args.min_samples)
    write_folder(args.out, root, splits, probed, sorted(set(scenes.values())), multi_label=False)

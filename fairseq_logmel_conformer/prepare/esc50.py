"""ESC-50 (and its ESC-10 subset): one manifest folder per cross-validation fold.

Input: the release folder with ``meta/esc50.csv`` (columns
``filename,fold,target,category,esc10,src_file,take``) and ``audio/``.
Output: ``OUT/fold1`` ... ``OUT/fold5``; in ``foldK``, ``train`` holds the
other four folds and ``valid`` fold K. ``labels.txt`` lists the categories in
ascending ``target`` order (50 classes, or the 10 ESC-10 classes with ``--esc10``).
"""
import argparse
import os
from typing import Dict, List, Tuple

from .common import audio_root, check_label_name, locate, probe, read_csv_dicts, write_folder

COLUMNS = ("filename", "fold", "target", "category", "esc10")


def read_metadata(csv_path: str, esc10: bool) -> Tuple[List[str], List[Tuple[int, str, str]]]:
    """-> (categories in target order, [(fold, filename, category)] in file order); ESC-10 rows only if ``esc10``."""
    targets: Dict[int, str] = {}
    rows = []
    for number, record in read_csv_dicts(csv_path, COLUMNS):
        where = f"{csv_path}:{number}"
        flag = record["esc10"].strip()
        if flag not in ("True", "False"):
            raise ValueError(f"{where}: esc10 must be True or False, got {flag!r}")
        if esc10 and flag == "False":
            continue
        try:
            fold, target = int(record["fold"]), int(record["target"])
        except ValueError:
            raise ValueError(f"{where}: fold and target must be integers, got {record['fold']!r}, {record['target']!r}") from None
        category = check_label_name(record["category"].strip(), where)
        if targets.setdefault(target, category) != category:
            raise ValueError(f"{where}: target {target} is {category!r} here but {targets[target]!r} earlier")
        rows.append((fold, record["filename"].strip(), category))
    if len(set(targets.values())) != len(targets):
        raise ValueError(f"{csv_path}: a category has several targets: {sorted(targets.items())}")
    if not rows:
        raise ValueError(f"{csv_path}: no {'ESC-10 ' if esc10 else ''}rows")
    return [targets[t] for t in sorted(targets)], rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="ESC-50 release folder holding meta/esc50.csv and audio/")
    parser.add_argument("--audio-dir", help="folder of the clips named in esc50.csv (default: DATASET_DIR/audio)")
    parser.add_argument("--esc10", action="store_true", help="keep only the 10 ESC-10 classes (rows with esc10=True)")


def prepare(args: argparse.Namespace) -> None:
    """Write OUT/fold1 ... OUT/fold5."""
    root = audio_root(args.audio_dir or os.path.join(args.dataset_dir, "audio"))
    categories, rows = read_metadata(os.path.join(args.dataset_dir, "meta", "esc50.csv"), args.esc10)
    folds = sorted({fold for fold, _, _ in rows})
    if folds != [1, 2, 3, 4, 5]:
        raise ValueError(f"ESC-50 has folds 1-5, metadata has {folds}")
    clips = [(fold, locate(root, filename, filename, (category,))) for fold, filename, category in rows]
    probed = probe(root, [clip for _, clip in clips], args.jobs, args.min_samples)
    missing = 0
    for held_out in folds:
        splits = {
            "train": [clip for fold, clip in clips if fold != held_out],
            "valid": [clip for fold, clip in clips if fold == held_out],
        }
        summaries = write_folder(os.path.join(args.out, f"fold{held_out}"), root, splits, probed, categories, multi_label=False)
        missing += summaries[1].missing
    # Each clip is a valid clip of exactly one fold, so this counts every problem once.
    print(f"ESC-{len(categories)}: {len(rows)} clips in {len(folds)} folds, {missing} missing or unreadable")


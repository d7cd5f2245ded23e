"""Print the top-k classes of audio files with a fine-tuned model, optionally with a PNG timeline.

    logmel-tag CHECKPOINT AUDIO [AUDIO ...] [--top-k 5] [--timeline-dir PLOTS] [--labels labels.txt]

AUDIO may be audio files, folders (searched recursively) or fairseq manifests
(.tsv). For each file, prints its
path, then one ``probability<TAB>label`` line per class, most probable first.
With ``--timeline-dir``, also writes ``PLOTS/<name>.png``: the frame-level
probabilities over time of the file's top ``--timeline-classes`` classes (a
sound event detection view), each class scaled to its own peak. ``--labels`` shows the display names of a
``labels.txt`` (second column) instead of the class names (e.g. AudioSet MIDs).
Unreadable files are listed at the end and make the exit status 1.
"""
import argparse
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from ..data.audio import AudioReadError
from ..data.labels import LabelVocabulary
from ..inference import WINDOW_POOLING, Prediction
from .common import add_checkpoint_arguments, add_device_arguments, add_window_arguments, expand_inputs, load_audio_model, report_unreadable


def plot_timeline(prediction: Prediction, names: List[str], num_classes: int, title: str, path: str) -> None:
    """Write a heat map of ``prediction.frame_probabilities`` (T', C) for its ``num_classes`` most probable classes.

    Each class's row is scaled to its own peak in the file (the top of the colour bar), so the time course of a
    quiet class shows as clearly as a loud one's; each row's label gives the clip probability and that peak.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = np.argsort(-prediction.probabilities, kind="stable")[:num_classes]
    frames = prediction.frame_probabilities[:, top].T
    peaks = frames.max(axis=1)
    scaled = frames / np.where(peaks > 0, peaks, 1.0)[:, None]
    step = prediction.timestamps[1] - prediction.timestamps[0] if len(prediction.timestamps) > 1 else 0.08
    start, end = prediction.timestamps[0] - step / 2, prediction.timestamps[-1] + step / 2
    figure, axes = plt.subplots(figsize=(10, 1.2 + 0.35 * len(top)))
    image = axes.imshow(scaled, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0, cmap="magma", extent=(start, end, len(top) - 0.5, -0.5))
    axes.set_yticks(range(len(top)), [f"{names[i]} (clip {prediction.probabilities[i]:.2f}, peak {peak:.2g})" for i, peak in zip(top, peaks)])
    axes.set_xlabel("time (s)")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="probability / the class's peak")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def timeline_path(folder: str, audio_path: str, used: Dict[str, int]) -> str:
    """``folder/<name>.png``, with a numeric suffix when two inputs share a name."""
    stem = os.path.splitext(os.path.basename(audio_path))[0]
    count = used.get(stem, 0)
    used[stem] = count + 1
    return os.path.join(folder, f"{stem}.png" if count == 0 else f"{stem}_{count}.png")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="logmel-tag", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(parser, "a logmel_conformer_classifier (fine-tuned) checkpoint (.pt)")
    parser.add_argument("audio", nargs="+", help="audio files, folders searched recursively, or fairseq manifests (.tsv)")
    parser.add_argument("--top-k", type=int, default=5, help="classes printed per file (default: %(default)s)")
    parser.add_argument("--timeline-dir", help="write a PNG of the frame-level probabilities of each file here")
    parser.add_argument("--timeline-classes", type=int, default=5, help="classes shown in each timeline (default: %(default)s)")
    parser.add_argument("--window-pooling", choices=WINDOW_POOLING, default="mean", help="how the windows of a long file are pooled (default: %(default)s)")
    parser.add_argument("--labels", help="labels.txt whose second column gives display names")
    add_device_arguments(parser)
    add_window_arguments(parser)
    args = parser.parse_args(argv)

    model = load_audio_model(args)
    if not model.is_classifier:
        raise SystemExit(f"error: {args.checkpoint} holds a pre-trained model without a classifier; use logmel-embed for embeddings")
    names = model.class_names
    if args.labels:
        vocabulary = LabelVocabulary.read(args.labels)
        if vocabulary.names != names:
            raise SystemExit(f"error: the classes of {args.labels} differ from the model's ({len(vocabulary)} vs {len(names)} classes, or another order)")
        names = vocabulary.display_names
    if args.timeline_dir:
        os.makedirs(args.timeline_dir, exist_ok=True)
    used_names: Dict[str, int] = {}
    failures = []
    for path in (audio.path for audio in expand_inputs(args.audio)):
        try:
            prediction = model.predict(path, frame_level=bool(args.timeline_dir), window_pooling=args.window_pooling)
        except (AudioReadError, ValueError) as error:
            failures.append(f"{path}: {error}")
            continue
        print(path)
        for index in np.argsort(-prediction.probabilities, kind="stable")[: args.top_k]:
            print(f"{prediction.probabilities[index]:.4f}\t{names[index]}")
        if args.timeline_dir:
            plot_timeline(prediction, names, args.timeline_classes, os.path.basename(path), timeline_path(args.timeline_dir, path, used_names))
        sys.stdout.flush()
    return report_unreadable(failures, f"{len(failures)} unreadable file(s):")


if __name__ == "__main__":
    sys.exit(main())

"""Clip samplers for fine-tuning: class-balanced epochs and label-fraction subsets (Table 1).

Labels come either as a list with one entry per clip, each an iterable of class
indices (multi-label aware; single-label data is ``[[c] for c in y]``, an empty
entry is an unlabelled clip), or as an (N, C) bool matrix.
"""
from typing import Sequence, Union

import numpy as np

Labels = Union[np.ndarray, Sequence[Sequence[int]]]


def label_matrix(labels: Labels) -> np.ndarray:
    """(N, C) bool matrix of ``labels``; for index lists ``C`` is the largest index + 1."""
    if isinstance(labels, np.ndarray):
        if labels.dtype != np.bool_ or labels.ndim != 2:
            raise ValueError(
                f"a label array must be an (N, C) bool matrix, got shape {labels.shape} dtype {labels.dtype}; "
                "pass class indices as a list of lists instead"
            )
        return labels
    rows = [np.asarray(list(entry), dtype=np.int64) for entry in labels]
    if not rows:
        raise ValueError("labels is empty: there are no clips")
    flat = np.concatenate(rows)
    if flat.size and flat.min() < 0:
        raise ValueError(f"class indices must be >= 0, got {int(flat.min())}")
    matrix = np.zeros((len(rows), int(flat.max()) + 1 if flat.size else 0), dtype=bool)
    matrix[np.repeat(np.arange(len(rows)), [len(r) for r in rows]), flat] = True
    return matrix


def class_balanced_indices(labels: Labels, num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """Clip indices (with repetition) in which every class is drawn equally often in expectation.

    Each of the ``num_samples`` draws picks a class uniformly among the classes
    that have clips, then a clip uniformly among that class's clips (the usual
    AudioSet balanced sampler). With multi-label clips, classes that co-occur
    with many others also appear as passengers, so observed frequencies are
    about equal rather than exactly equal. Unlabelled clips are never drawn.

    Returns:
        (num_samples,) int64 clip indices, a function of ``(seed, epoch)`` only.
    """
    if num_samples < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"num_samples, seed and epoch must be >= 0, got {num_samples}, {seed}, {epoch}")
    matrix = label_matrix(labels)
    # Clip indices grouped by class (ascending class order), with each class's range.
    classes, clips = np.nonzero(matrix.T)
    if clips.size == 0:
        raise ValueError(f"no clip has a label (label matrix of shape {matrix.shape})")
    present, starts, counts = np.unique(classes, return_index=True, return_counts=True)
    rng = np.random.default_rng([seed, epoch])
    chosen = rng.integers(len(present), size=num_samples)
    offsets = (rng.random(num_samples) * counts[chosen]).astype(np.int64)
    return clips[starts[chosen] + offsets]


def label_fraction_subset(labels: Labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a reproducible ``fraction`` of the clips that covers every class when it can.

    The kept set is the first ``k = max(1, floor(fraction * N + 0.5))`` clips of one
    seeded ordering of all clips:

    1. Coverage: classes with clips are visited from rarest to most common (ties
       in random order); a class not yet carried by an earlier pick gets one
       clip drawn uniformly among its clips.
    2. The remaining clips follow in uniformly random order.

    Coverage takes at most one clip per class, so every class with clips is
    kept whenever ``k`` is at least the number of such classes (rarest classes
    first otherwise); beyond that the subset is a uniform random sample, so it
    keeps the natural class distribution. Because the ordering does not depend
    on ``fraction``, subsets from one seed are nested (1% within 3% within 10% ...).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    matrix = label_matrix(labels)
    num_clips = matrix.shape[0]
    budget = max(1, int(np.floor(fraction * num_clips + 0.5)))
    rng = np.random.default_rng(seed)
    counts = matrix.sum(axis=0)
    present = np.flatnonzero(counts)
    rarest_first = present[np.lexsort((rng.random(len(present)), counts[present]))]
    covered = np.zeros(matrix.shape[1], dtype=bool)
    picked = []
    for label in rarest_first:
        if covered[label]:
            continue
        clip = rng.choice(np.flatnonzero(matrix[:, label]))
        picked.append(clip)
        covered |= matrix[clip]
    rest = np.setdiff1d(np.arange(num_clips), picked)
    order = np.concatenate([np.asarray(picked, dtype=np.int64), rng.permutation(rest)])
    return np.sort(order[:budget])

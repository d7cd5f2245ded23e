"""Properties of the class-balanced sampler and the label-fraction subsets."""
import numpy as np
import pytest

from fairseq_logmel_conformer.data.sampling import class_balanced_indices, label_fraction_subset, label_matrix


@pytest.fixture(scope="module")
def skewed_labels():
    """2000 clips over 10 classes whose natural frequencies span over 100x.

    Each clip has a primary class drawn with probability proportional to 0.55**c
    and, for 30% of clips, a second label drawn the same way; class 9 is then
    set to be on clips 0-4 only, and clip 5 is left unlabelled.
    """
    rng = np.random.default_rng(0)
    weights = 0.55 ** np.arange(10)
    weights /= weights.sum()
    matrix = np.zeros((2000, 10), dtype=bool)
    matrix[np.arange(2000), rng.choice(10, size=2000, p=weights)] = True
    second = rng.random(2000) < 0.3
    matrix[np.flatnonzero(second), rng.choice(10, size=int(second.sum()), p=weights)] = True
    matrix[:, 9] = np.arange(2000) < 5
    matrix[5] = False
    return [list(np.flatnonzero(row)) for row in matrix]


def test_label_matrix_forms():
    lists = [[0, 2], [], [1]]
    matrix = label_matrix(lists)
    assert matrix.tolist() == [[True, False, True], [False, False, False], [False, True, False]]
    assert label_matrix(matrix) is matrix
    with pytest.raises(ValueError, match=r"\(3, 1\).*int"):
        label_matrix(np.array([[0], [2], [1]]))
    with pytest.raises(ValueError, match="-1"):
        label_matrix([[0], [-1]])


def test_balanced_sampler_deterministic_per_epoch(skewed_labels):
    first = class_balanced_indices(skewed_labels, 500, seed=3, epoch=1)
    assert first.shape == (500,) and first.dtype == np.int64
    assert np.array_equal(first, class_balanced_indices(skewed_labels, 500, seed=3, epoch=1))
    assert not np.array_equal(first, class_balanced_indices(skewed_labels, 500, seed=3, epoch=2))
    assert not np.array_equal(first, class_balanced_indices(skewed_labels, 500, seed=4, epoch=1))


def test_balanced_sampler_equalises_classes(skewed_labels):
    matrix = label_matrix(skewed_labels)
    natural = matrix.sum(0)
    assert natural.max() / natural.min() > 100
    drawn = class_balanced_indices(skewed_labels, 20000, seed=0, epoch=1)
    assert 5 not in set(drawn.tolist())
    balanced = matrix[drawn].sum(0)
    # Every class is drawn for ~1/10 of the samples, plus passenger labels of the other draws.
    share = balanced / len(drawn)
    assert share.min() > 0.08 and share.max() < 0.45
    assert balanced.max() / balanced.min() < 5
    # Within a class, clips are drawn uniformly: the 5 clips of class 9 appear about equally.
    counts_9 = np.bincount(drawn[matrix[drawn, 9]], minlength=5)[:5]
    assert counts_9.min() > 0.6 * counts_9.mean()


def test_balanced_sampler_errors():
    with pytest.raises(ValueError, match="no clip has a label"):
        class_balanced_indices([[], []], 4, seed=0, epoch=0)
    with pytest.raises(ValueError, match="-1"):
        class_balanced_indices([[0]], 4, seed=0, epoch=-1)


@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.1, 0.3, 1.0])
def test_fraction_subset_size_coverage_reproducibility(skewed_labels, fraction):
    subset = label_fraction_subset(skewed_labels, fraction, seed=0)
    assert len(subset) == max(1, int(np.floor(fraction * 2000 + 0.5)))
    assert np.array_equal(subset, np.unique(subset))
    assert subset.min() >= 0 and subset.max() < 2000
    assert np.array_equal(subset, label_fraction_subset(skewed_labels, fraction, seed=0))
    matrix = label_matrix(skewed_labels)
    assert matrix[subset].any(0).all()


def test_fraction_subsets_nested_and_seeded(skewed_labels):
    subsets = [set(label_fraction_subset(skewed_labels, f, seed=1).tolist()) for f in (0.01, 0.03, 0.1, 0.3)]
    assert all(small <= large for small, large in zip(subsets, subsets[1:]))
    other = set(label_fraction_subset(skewed_labels, 0.1, seed=2).tolist())
    assert other != subsets[2]


def test_fraction_subset_small_budget_prefers_rare_classes():
    # Classes 0 (4 clips), 1 (3 clips), 2 (1 clip): a 2-clip budget covers the two rarest.
    labels = [[0], [0], [0], [0], [1], [1], [1], [2]]
    for seed in range(5):
        subset = label_fraction_subset(labels, 0.25, seed=seed)
        assert len(subset) == 2 and 7 in subset and len(set(subset) & {4, 5, 6}) == 1
    assert len(label_fraction_subset(labels, 0.01, seed=0)) == 1
    with pytest.raises(ValueError, match="0.0"):
        label_fraction_subset(labels, 0.0, seed=0)

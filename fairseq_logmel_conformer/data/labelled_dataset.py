"""Manifest clips with their class labels, optional label-fraction subsets and class-balanced epochs."""
from typing import Dict, List

import numpy as np
import torch
from fairseq.data import FairseqDataset

from .manifest_dataset import AudioClipDataset
from .sampling import class_balanced_indices, label_fraction_subset


class LabelledAudioDataset(FairseqDataset):
    """Wraps an :class:`AudioClipDataset` (plain or packed); batches gain ``target`` (B, C) multi-hot float.

    Args:
        audio: the clips; ``audio.line_indices`` aligns them with ``labels``.
        labels: class indices of every manifest line (``read_label_file``).
        num_classes: C.
        fraction: keep this reproducible, class-covering fraction of the clips (1.0: all).
        balanced: draw each epoch's clips so that classes appear about equally often
            (deterministic given ``seed`` and epoch; an epoch has as many draws as clips).
    """

    def __init__(
        self,
        audio: AudioClipDataset,
        labels: List[List[int]],
        num_classes: int,
        fraction: float = 1.0,
        balanced: bool = False,
        seed: int = 1,
    ):
        super().__init__()
        self.audio = audio
        self.num_classes = num_classes
        clip_labels = [labels[line] for line in audio.line_indices]
        self.positions = np.arange(len(audio))
        if fraction < 1.0:
            self.positions = label_fraction_subset(clip_labels, fraction, seed)
        self.labels = [clip_labels[p] for p in self.positions]
        self.index_of_position = {int(p): i for i, p in enumerate(self.positions)}
        self.sizes = audio.sizes[self.positions]
        self.balanced = balanced
        self.seed = seed
        self.epoch = 1

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> Dict:
        # The item keeps the audio dataset's id until collation: its collater looks up (bucketed) sizes by that id.
        return self.audio[int(self.positions[index])]

    def __getitems__(self, indices: List[int]) -> List[Dict]:
        # A whole batch at once, as torch's loader asks for it: a packed corpus reads it in one pass.
        return self.audio.__getitems__([int(self.positions[i]) for i in indices])

    def target(self, index: int) -> torch.Tensor:
        target = torch.zeros(self.num_classes)
        target[self.labels[index]] = 1.0
        return target

    def collater(self, samples: List[Dict]) -> Dict:
        batch = self.audio.collater(samples)
        if batch:
            batch["id"] = torch.tensor([self.index_of_position[int(i)] for i in batch["id"]])
            batch["target"] = torch.stack([self.target(int(i)) for i in batch["id"]])
        return batch

    def num_tokens(self, index: int) -> int:
        return self.size(index)

    def size(self, index: int) -> int:
        return self.audio.size(int(self.positions[index]))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.audio.set_epoch(epoch)

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        # Balanced epochs draw different clips each time, so fairseq must rebuild the batches.
        return not self.balanced

    def ordered_indices(self) -> np.ndarray:
        if self.balanced:
            indices = class_balanced_indices(self.labels, len(self), self.seed, self.epoch)
        else:
            indices = np.random.permutation(len(self)) if self.audio.shuffle else np.arange(len(self))
        # Sorting by length (stable, so the random order breaks ties) keeps padding low in each batch.
        return indices[np.argsort(self.sizes[indices], kind="stable")[::-1]]


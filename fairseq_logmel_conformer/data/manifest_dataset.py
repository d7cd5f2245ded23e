"""Waveform dataset over a fairseq manifest, batched with fairseq's padding collater."""
import logging
from typing import Dict, Optional

import numpy as np
from fairseq.data.audio.raw_audio_dataset import RawAudioDataset

from .audio import read_audio, read_manifest

logger = logging.getLogger(__name__)


class ManifestAudioDataset(RawAudioDataset):
    """Decoded mono clips at ``sample_rate``, randomly cropped to ``max_sample_size``.

    Crops are drawn from a generator seeded by (seed, epoch, index), so they are
    the same whatever the number of loader workers and after a resume. Clips
    shorter than ``min_sample_size`` (manifest sizes) are left out;
    ``line_indices`` maps each kept item to its manifest entry so that label
    files can be aligned. Collated batches hold ``net_input.source`` (B, S) and
    ``net_input.padding_mask`` (B, S), True at padding.
    """

    def __init__(
        self,
        manifest_path: str,
        sample_rate: int,
        max_sample_size: Optional[int] = None,
        min_sample_size: int = 0,
        shuffle: bool = True,
        seed: int = 1,
        num_buckets: int = 0,
    ):
        super().__init__(
            sample_rate=sample_rate,
            max_sample_size=max_sample_size,
            min_sample_size=min_sample_size,
            shuffle=shuffle,
            pad=True,
        )
        self.manifest = read_manifest(manifest_path)
        self.line_indices = np.array(
            [i for i, size in enumerate(self.manifest.sizes) if size >= min_sample_size], dtype=np.int64
        )
        skipped = len(self.manifest.sizes) - len(self.line_indices)
        if skipped:
            logger.info(f"{manifest_path}: left out {skipped} clips shorter than {min_sample_size} samples")
        self.sizes = np.array(self.manifest.sizes, dtype=np.int64)[self.line_indices]
        self.seed = seed
        self.epoch = 1
        self.set_bucket_info(num_buckets)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def audio_path(self, index: int) -> str:
        return self.manifest.audio_path(int(self.line_indices[index]))

    def __getitem__(self, index: int) -> Dict:
        source = read_audio(self.audio_path(index), self.sample_rate)
        excess = source.shape[0] - self.max_sample_size
        if excess > 0:
            start = np.random.default_rng([self.seed, self.epoch, index]).integers(0, excess + 1)
            source = source[start : start + self.max_sample_size]
        return {"id": index, "source": source}

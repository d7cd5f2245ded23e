"""Waveform dataset over a fairseq manifest, batched with fairseq's padding collater."""
import logging
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq.data.audio.raw_audio_dataset import RawAudioDataset
from fairseq.data.data_utils import get_bucketed_sizes

from .audio import SIZE_TOLERANCE, AudioReadError, num_samples_at_rate, read_audio, too_short
from .manifest import read_manifest

logger = logging.getLogger(__name__)

# Entries whose headers are read when the dataset is built: enough to catch a wrong root
# folder or a manifest counted at another sample rate, cheap even on a network file system.
PROBED_ENTRIES = 8
# Clips left out for being too short are named in the log, the first ones of them.
SHORT_CLIPS_LISTED = 10


def fix_hint(manifest_path: str) -> str:
    """What to do about an unreadable clip of ``manifest_path``."""
    return (
        f"Run `logmel-manifest --check {manifest_path}` to list every problem of the manifest at once, "
        "or add the override ++task.skip_unreadable_clips=true to skip (and count) unreadable clips."
    )


class ManifestAudioDataset(RawAudioDataset):
    """Decoded mono clips at ``sample_rate``, randomly cropped to ``max_sample_size``.

    Crops are drawn from a generator seeded by (seed, epoch, index), so they are
    the same whatever the number of loader workers and after a resume; the
    epoch lives in shared memory because fairseq keeps its loader workers (and
    their copies of the dataset) alive across epochs. Clips shorter than
    ``min_sample_size`` (manifest sizes) are left out; ``line_indices`` maps each
    kept item to its manifest entry so that label files can be aligned.

    Bad input: building the dataset fails fast, naming the manifest line, if
    the root folder is missing or one of ``PROBED_ENTRIES`` entries spread over
    the manifest cannot be opened or disagrees with its manifest size. Reading
    a clip that is unreadable (see :func:`~.audio.read_audio`) or whose length
    disagrees with the manifest raises :class:`AudioReadError` naming the
    manifest line and the file; with ``skip_unreadable`` the clip is left out
    of its batch instead, with a warning, and counted in the batch's
    ``unreadable_clips`` (a batch of nothing but unreadable clips still raises:
    the audio has most likely become unavailable).

    Collated batches hold ``net_input.source`` (B, S), ``net_input.padding_mask``
    (B, S) True at padding, ``id`` (B,), ``clip_names`` (``manifest:line`` of
    each clip, for error reports) and ``unreadable_clips`` (int).
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
        skip_unreadable: bool = False,
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
        short = [
            f"{self.manifest.location(i)}: {self.manifest.audio_path(i)}: {too_short(size, min_sample_size, sample_rate)}"
            for i, size in enumerate(self.manifest.sizes)
            if size < min_sample_size
        ]
        listed = ""
        if short:
            listed = "\n".join(short[:SHORT_CLIPS_LISTED]) + ("\n..." if len(short) > SHORT_CLIPS_LISTED else "")
            logger.warning(f"{manifest_path}: left out {len(short)} clips (task.min_sample_size={min_sample_size}):\n{listed}")
        if len(self.line_indices) == 0:
            raise ValueError(f"{manifest_path}: none of its {len(self.manifest.sizes)} clips is long enough to train on\n{listed}".rstrip())
        self.sizes = np.array(self.manifest.sizes, dtype=np.int64)[self.line_indices]
        self.seed = seed
        self.skip_unreadable = skip_unreadable
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()
        self.set_bucket_info(num_buckets)
        self.probe()

    def set_bucket_info(self, num_buckets: int) -> None:
        """fairseq's bucketing (``num_buckets > 0``: the collater pads each batch up to the bucket length of its
        longest clip, the ``num_buckets``-quantiles of the cropped clip lengths), which calls numpy's percentile
        with ``interpolation=``, an argument numpy 2 removed."""
        self.num_buckets = num_buckets
        if num_buckets > 0:
            self._collated_sizes = np.minimum(np.asarray(self.sizes), self.max_sample_size)
            quantiles = np.percentile(self._collated_sizes, np.linspace(0, 100, num_buckets + 1), method="lower")
            self.buckets = np.unique(quantiles[1:])
            self._bucketed_sizes = get_bucketed_sizes(self._collated_sizes, self.buckets)
            logger.info(f"{len(self.buckets)} bucket(s) for the audio dataset: {self.buckets}")

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def size(self, index: int) -> int:
        # Clips are cropped to max_sample_size when read, so batching (max_tokens) must count them at
        # that length; fairseq's RawAudioDataset counts a padded dataset's clips at their full length.
        return min(int(self.sizes[index]), self.max_sample_size)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def audio_path(self, index: int) -> str:
        return self.manifest.audio_path(int(self.line_indices[index]))

    def location(self, index: int) -> str:
        """``manifest.tsv:LINE`` of item ``index``."""
        return self.manifest.location(int(self.line_indices[index]))

    def probe(self) -> None:
        """Read the headers of ``PROBED_ENTRIES`` entries spread over the manifest; raise on systematic problems."""
        root = self.manifest.root
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{self.manifest.path}:1: the audio root folder {root} does not exist")
        picks = np.unique(np.linspace(0, len(self) - 1, min(PROBED_ENTRIES, len(self))).round().astype(np.int64))
        problems = []
        for index in picks:
            try:
                self._check_size(index, num_samples_at_rate(self.audio_path(index), self.sample_rate))
            except AudioReadError as error:
                problems.append(f"{self.location(index)}: {error}")
        if not problems:
            return
        report = "\n".join(problems)
        if self.skip_unreadable and len(problems) < len(picks):
            logger.warning(f"{len(problems)} of {len(picks)} probed clips are unreadable and will be skipped:\n{report}")
            return
        raise AudioReadError(f"{len(problems)} of {len(picks)} probed clips are unreadable:\n{report}\n{fix_hint(self.manifest.path)}")

    def _check_size(self, index: int, num_samples: int) -> None:
        expected = int(self.sizes[index])
        if abs(num_samples - expected) > SIZE_TOLERANCE:
            raise AudioReadError(
                f"{self.audio_path(index)} has {num_samples} samples at {self.sample_rate} Hz but the manifest says "
                f"{expected}; rebuild the manifest with logmel-manifest (it counts samples at the target rate)"
            )

    def read_clip(self, index: int) -> torch.Tensor:
        """Item ``index`` decoded, (S,) at ``sample_rate``, checked against its manifest size."""
        source = read_audio(self.audio_path(index), self.sample_rate)
        self._check_size(index, source.shape[0])
        return source

    def __getitem__(self, index: int) -> Dict:
        try:
            source = self.read_clip(index)
        except AudioReadError as error:
            message = f"{self.location(index)}: {error}"
            if not self.skip_unreadable:
                raise AudioReadError(f"{message}\n{fix_hint(self.manifest.path)}") from error
            logger.warning(f"skipping unreadable clip {message}")
            return {"id": index, "source": None, "clip_name": self.location(index)}
        excess = source.shape[0] - self.max_sample_size
        if excess > 0:
            start = np.random.default_rng([self.seed, self.epoch, index]).integers(0, excess + 1)
            source = source[start : start + self.max_sample_size]
        return {"id": index, "source": source, "clip_name": self.location(index)}

    def collater(self, samples: List[Dict]) -> Dict:
        readable = [s for s in samples if s["source"] is not None]
        if samples and not readable:
            names = ", ".join(s["clip_name"] for s in samples)
            raise AudioReadError(f"every clip of a batch is unreadable ({names}); is the audio folder still available?")
        batch = super().collater(readable)
        if batch:
            batch["clip_names"] = [s["clip_name"] for s in readable]
            batch["unreadable_clips"] = len(samples) - len(readable)
            # Without a mask attention may take the flash kernel. The model trusts this in training rather
            # than check on the device for an all-False mask (a host-device sync); here, on the CPU, it is cheap.
            if not batch["net_input"]["padding_mask"].any():
                batch["net_input"]["padding_mask"] = None
        return batch

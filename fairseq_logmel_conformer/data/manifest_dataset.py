"""Waveform datasets over a fairseq manifest (or a packed corpus), batched with fairseq's padding collater."""
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


_MASK64 = (1 << 64) - 1


def _splitmix64(value: int) -> int:
    """splitmix64's finaliser on a Python int (mod 2**64): a well-mixed 64-bit hash."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def crop_starts(seed: int, epoch: int, entries: np.ndarray, excess: np.ndarray) -> np.ndarray:
    """Crop starts, uniform in ``[0, excess]``, drawn from a hash of (seed, epoch, manifest entry): int64 array.

    The same clip gets the same crop whatever reads it (plain or packed corpus,
    any loader worker, a resumed run), and a whole batch is drawn in one numpy
    pass: seeding a generator per clip cost a fifth of a packed read.
    """
    key = np.uint64(_splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)))
    # splitmix64 again, vectorised: numpy's uint64 arithmetic wraps around as the hash needs.
    z = np.asarray(entries, dtype=np.uint64) ^ key
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    uniform = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    excess = np.asarray(excess, dtype=np.int64)
    return np.minimum((uniform * (excess + 1)).astype(np.int64), excess)


class AudioClipDataset(RawAudioDataset):
    """Mono clips at ``sample_rate``, randomly cropped to ``max_sample_size``: what plain and packed corpora share.

    A subclass lists its clips (``clip_sizes``: manifest sizes; ``clip_entries``:
    the manifest entry of each, which aligns label files) and reads them
    (:meth:`read_item`, which crops with :meth:`crop`). Clips shorter than
    ``min_sample_size`` are left out with a warning naming them; item ``i`` is
    clip ``clip_of_item[i]``, manifest entry ``line_indices[i]``.

    Crops are drawn from a hash of (seed, epoch, manifest entry) (:func:`crop_starts`),
    so they are the same whatever the number of loader workers, after a resume,
    and for the same clip of a plain and of a packed corpus; the epoch lives in
    shared memory because fairseq keeps its loader workers (and their copies of
    the dataset) alive across epochs.

    Reading an unreadable clip raises :class:`AudioReadError` naming the
    manifest line; with ``skip_unreadable`` the clip is left out of its batch
    instead, with a warning, and counted in the batch's ``unreadable_clips`` (a
    batch of nothing but unreadable clips still raises: the audio has most
    likely become unavailable).

    Collated batches hold ``net_input.source`` (B, S) float32 (int16 16-bit
    PCM from a packed corpus, see :class:`~.packed_dataset.PackedAudioDataset`),
    ``net_input.padding_mask`` (B, S) True at padding (None when there is
    none), ``id`` (B,), ``clip_names`` (``manifest:line`` of each clip, for
    error reports) and ``unreadable_clips`` (int).
    """

    def __init__(
        self,
        name: str,
        clip_sizes: np.ndarray,
        clip_entries: np.ndarray,
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
        clip_sizes = np.asarray(clip_sizes, dtype=np.int64)
        self.clip_of_item = np.flatnonzero(clip_sizes >= min_sample_size)
        self.line_indices = np.asarray(clip_entries, dtype=np.int64)[self.clip_of_item]
        short = np.flatnonzero(clip_sizes < min_sample_size)
        described = [
            f"{self.clip_location(c)}: {self.clip_path(c)}: {too_short(int(clip_sizes[c]), min_sample_size, sample_rate)}"
            for c in short[:SHORT_CLIPS_LISTED]
        ]
        listed = "\n".join(described) + ("\n..." if len(short) > SHORT_CLIPS_LISTED else "")
        if len(short):
            logger.warning(f"{name}: left out {len(short)} clips (task.min_sample_size={min_sample_size}):\n{listed}")
        if len(self.clip_of_item) == 0:
            raise ValueError(f"{name}: none of its {len(clip_sizes)} clips is long enough to train on\n{listed}".rstrip())
        self.sizes = clip_sizes[self.clip_of_item]
        self.seed = seed
        self.skip_unreadable = skip_unreadable
        self._epoch = torch.ones(1, dtype=torch.long).share_memory_()
        self.set_bucket_info(num_buckets)

    # --- what a subclass provides ---------------------------------------------------------------

    def clip_location(self, clip: int) -> str:
        """``manifest.tsv:LINE`` of clip ``clip``."""
        raise NotImplementedError

    def clip_path(self, clip: int) -> str:
        """The audio file clip ``clip`` was read from."""
        raise NotImplementedError

    def read_item(self, index: int) -> torch.Tensor:
        """Item ``index`` read and cropped (:meth:`crop`): (S,) float32 at ``sample_rate``."""
        raise NotImplementedError

    def fix_hint(self) -> str:
        """What to do about an unreadable clip."""
        raise NotImplementedError

    @property
    def num_entries(self) -> int:
        """Entries of the manifest the clips come from: the lines a label file must have."""
        raise NotImplementedError

    # --- shared ------------------------------------------------------------------------------------

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
        return self.clip_path(int(self.clip_of_item[index]))

    def location(self, index: int) -> str:
        """``manifest.tsv:LINE`` of item ``index``."""
        return self.clip_location(int(self.clip_of_item[index]))

    def crop(self, index: int, length: int):
        """(start, count) of item ``index``'s crop from a clip of ``length`` samples, for this seed and epoch."""
        excess = length - self.max_sample_size
        if excess <= 0:
            return 0, length
        start = crop_starts(self.seed, self.epoch, self.line_indices[index : index + 1], np.array([excess]))[0]
        return int(start), self.max_sample_size

    def __getitem__(self, index: int) -> Dict:
        try:
            source = self.read_item(index)
        except AudioReadError as error:
            message = f"{self.location(index)}: {error}"
            if not self.skip_unreadable:
                raise AudioReadError(f"{message}\n{self.fix_hint()}") from error
            logger.warning(f"skipping unreadable clip {message}")
            return {"id": index, "source": None, "clip_name": self.location(index)}
        return {"id": index, "source": source, "clip_name": self.location(index)}

    def __getitems__(self, indices: List[int]) -> List[Dict]:
        return [self[index] for index in indices]

    def collater(self, samples: List[Dict]) -> Dict:
        readable = [s for s in samples if s["source"] is not None]
        if samples and not readable:
            names = ", ".join(s["clip_name"] for s in samples)
            raise AudioReadError(f"every clip of a batch is unreadable ({names}); is the audio folder still available?")
        batch = super().collater(readable)
        return self._finish_batch(batch, [s["clip_name"] for s in readable], len(samples) - len(readable))

    @staticmethod
    def _finish_batch(batch: Dict, clip_names: List[str], unreadable: int) -> Dict:
        if batch:
            batch["clip_names"] = clip_names
            batch["unreadable_clips"] = unreadable
            # Without a mask attention may take the flash kernel. The model trusts this in training rather
            # than check on the device for an all-False mask (a host-device sync); here, on the CPU, it is cheap.
            if batch["net_input"]["padding_mask"] is not None and not batch["net_input"]["padding_mask"].any():
                batch["net_input"]["padding_mask"] = None
        return batch


class ManifestAudioDataset(AudioClipDataset):
    """The clips of a fairseq manifest, decoded from their files (see :class:`AudioClipDataset`).

    Bad input: building the dataset fails fast, naming the manifest line, if
    the root folder is missing or one of ``PROBED_ENTRIES`` entries spread over
    the manifest cannot be opened or disagrees with its manifest size. Reading
    a clip that is unreadable (see :func:`~.audio.read_audio`) or whose length
    disagrees with the manifest raises :class:`AudioReadError` naming the
    manifest line and the file (or, with ``skip_unreadable``, skips it).
    """

    def __init__(self, manifest_path: str, sample_rate: int, **kwargs):
        self.manifest = read_manifest(manifest_path)
        sizes = self.manifest.sizes
        super().__init__(manifest_path, sizes, np.arange(len(sizes)), sample_rate, **kwargs)
        self.probe()

    def clip_location(self, clip: int) -> str:
        return self.manifest.location(clip)

    def clip_path(self, clip: int) -> str:
        return self.manifest.audio_path(clip)

    def fix_hint(self) -> str:
        return fix_hint(self.manifest.path)

    @property
    def num_entries(self) -> int:
        return len(self.manifest)

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
        raise AudioReadError(f"{len(problems)} of {len(picks)} probed clips are unreadable:\n{report}\n{self.fix_hint()}")

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

    def read_item(self, index: int) -> torch.Tensor:
        source = self.read_clip(index)
        start, count = self.crop(index, source.shape[0])
        return source[start : start + count]

"""The clips of a packed corpus (:mod:`.packed`) as a training dataset: a crop is one read at an offset of a shard."""
import logging
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import torch

from .manifest_dataset import PROBED_ENTRIES, AudioClipDataset, crop_starts
from .packed import UNIT_SCALE, PackedCorpusError, PackedSplit
from .shared_batches import LentBatch, batch_tensors

logger = logging.getLogger(__name__)


@dataclass
class PackedSlice:
    """A crop not yet read: ``count`` int16 samples of shard ``shard`` of ``split`` from sample ``begin``, times ``scale``."""

    split: PackedSplit
    shard: int
    begin: int
    count: int
    scale: np.float32

    def read_into(self, out: np.ndarray) -> None:
        """The int16 samples, unscaled, into ``out`` (contiguous, ``(count,)``)."""
        self.split.read_into(self.shard, self.begin, out)

    def read(self) -> torch.Tensor:
        """The samples as floats, ``(count,)``."""
        samples = np.empty(self.count, dtype=np.int16)
        self.read_into(samples)
        return torch.from_numpy(samples).to(torch.float32).mul_(float(self.scale))


class PackedAudioDataset(AudioClipDataset):
    """The clips of one split of a packed corpus (see :class:`~.manifest_dataset.AudioClipDataset`).

    Items, crops, batches, clip names and the clips left out for
    ``min_sample_size`` are those of a :class:`~.manifest_dataset.ManifestAudioDataset`
    over the manifest the split was packed from (same seed, same epoch); a
    sample differs only where the source was not on the 16-bit grid (rounding,
    below 2**-16 of full scale).

    Batches are read in one pass: ``__getitems__`` (which torch's loader
    calls for a whole batch) returns each crop as a :class:`PackedSlice`, and
    the collater reads the int16 samples straight into the batch tensor,
    which stays int16 (16-bit PCM, that the model's frontend converts on the
    training device) unless a clip of the batch has a scale of its own (audio
    above full scale; the batch is float32 then). In a loader worker, all of
    the batch's tensors are views of one buffer that the worker reuses
    (:mod:`.shared_batches`). ``dataset[i]`` returns the float tensor, as the
    manifest dataset does.

    Building the dataset checks the files' sizes and headers and the CRC-32 of
    ``PROBED_ENTRIES`` clips spread over the split; a damaged corpus raises
    :class:`~.packed.PackedCorpusError` naming the file, whatever
    ``skip_unreadable`` says (nothing on disk could replace the damaged audio).
    """

    def __init__(self, folder: str, split: str, sample_rate: int, **kwargs):
        self.packed = PackedSplit(folder, split)
        if self.packed.sample_rate != sample_rate:
            raise ValueError(
                f"{self.packed.meta_file}: packed at {self.packed.sample_rate} Hz, but task.sample_rate is {sample_rate}; "
                f"pack again with logmel-pack --sample-rate {sample_rate}"
            )
        index = self.packed.index
        super().__init__(self.packed.meta_file, index["size"], index["entry"], sample_rate, **kwargs)
        # The fields read for every item, as plain arrays (a structured memmap record costs microseconds a field).
        kept = self.clip_of_item
        self._shard = np.asarray(index["shard"][kept], dtype=np.int32)
        self._offset = np.asarray(index["offset"][kept], dtype=np.int64)
        self._length = np.asarray(index["length"][kept], dtype=np.int64)
        self._scale = np.asarray(index["scale"][kept], dtype=np.float32)
        self.probe()

    def clip_location(self, clip: int) -> str:
        return self.packed.clip_location(clip)

    def location(self, index: int) -> str:
        # The same as clip_location(clip_of_item[index]) without reading the memory-mapped index.
        return f"{self.packed.source_manifest}:{int(self.line_indices[index]) + 2}"

    def clip_path(self, clip: int) -> str:
        return self.packed.clip_path(clip)

    def fix_hint(self) -> str:
        return self.packed.repair_hint()

    @property
    def num_entries(self) -> int:
        return self.packed.num_entries

    def probe(self) -> None:
        """Check the CRC-32 of ``PROBED_ENTRIES`` clips spread over the split; raise naming the shards that fail."""
        picks = np.unique(np.linspace(0, len(self) - 1, min(PROBED_ENTRIES, len(self))).round().astype(np.int64))
        problems = []
        for index in picks:
            problem = self.packed.clip_crc_problem(int(self.clip_of_item[index]))
            if problem:
                problems.append(f"{self.location(index)}: {problem}")
        if problems:
            report = "\n".join(problems)
            raise PackedCorpusError(f"{len(problems)} of {len(picks)} probed clips are corrupt:\n{report}\n{self.fix_hint()}")

    def crop_slice(self, index: int) -> PackedSlice:
        """Item ``index``'s crop, not yet read."""
        start, count = self.crop(index, int(self._length[index]))
        begin = int(self._offset[index]) + start
        return PackedSlice(self.packed, int(self._shard[index]), begin, count, self._scale[index])

    def read_item(self, index: int) -> torch.Tensor:
        return self.crop_slice(index).read()

    def __getitems__(self, indices: List[int]) -> List[Dict]:
        """Items ``indices`` (a batch) with their crops not yet read; crops drawn for the whole batch at once."""
        items = np.asarray(indices, dtype=np.int64)
        lengths = self._length[items]
        excess = lengths - self.max_sample_size
        starts = np.zeros(len(items), dtype=np.int64)
        long = excess > 0
        if long.any():
            starts[long] = crop_starts(self.seed, self.epoch, self.line_indices[items[long]], excess[long])
        begins = (self._offset[items] + starts).tolist()
        counts = np.minimum(lengths, self.max_sample_size).tolist()
        manifest, packed = self.packed.source_manifest, self.packed
        return [
            {"id": index, "source": PackedSlice(packed, shard, begin, count, scale), "clip_name": f"{manifest}:{entry + 2}"}
            for index, shard, begin, count, scale, entry in zip(
                items.tolist(), self._shard[items].tolist(), begins, counts, self._scale[items], self.line_indices[items].tolist()
            )
        ]

    def collater(self, samples: List[Dict]) -> Dict:
        if not samples:
            return {}
        if self.num_buckets > 0 or not all(isinstance(s["source"], PackedSlice) for s in samples):
            return super().collater([{**s, "source": s["source"].read()} if isinstance(s["source"], PackedSlice) else s for s in samples])
        # What fairseq's RawAudioDataset.collater makes of the read crops (padded to the longest), in one pass.
        counts = [s["source"].count for s in samples]
        rows, width = len(samples), min(max(counts), self.max_sample_size)
        padded = any(count < width for count in counts)
        scales = [float(s["source"].scale) for s in samples]
        # Clips stored at the 16-bit PCM scale travel as int16 and become float on the training device (the
        # model's frontend takes int16 as PCM): half the bytes to copy, share and transfer, and no conversion here.
        pcm = all(scale == UNIT_SCALE for scale in scales)
        dtype = torch.int16 if pcm else torch.float32
        specs = [((rows, width), dtype), ((rows,), torch.int64)] + ([((rows, width), torch.bool)] if padded else [])
        (source, ids, *mask), lease = batch_tensors(specs)
        rows_pcm = source.numpy() if pcm else None
        for row, (sample, count) in enumerate(zip(samples, counts)):
            if pcm:
                sample["source"].read_into(rows_pcm[row, :count])
            else:
                # A clip with a scale of its own (audio above full scale) makes the batch float32.
                source[row, :count] = sample["source"].read()
            if count < width:
                source[row, count:] = 0
        ids.copy_(torch.tensor([s["id"] for s in samples]))
        padding_mask = None
        if padded:
            padding_mask = mask[0]
            for row, count in enumerate(counts):
                padding_mask[row, :count] = False
                padding_mask[row, count:] = True
        batch = {"id": ids, "net_input": {"source": source, "padding_mask": padding_mask}}
        batch = self._finish_batch(batch, [s["clip_name"] for s in samples], 0)
        return batch if lease is None else LentBatch(batch, lease)

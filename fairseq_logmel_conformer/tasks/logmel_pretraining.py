"""``logmel_pretraining``: self-supervised pre-training on unlabelled audio listed in fairseq manifests."""
import gc
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from ..data.audio import min_clip_samples
from ..data.manifest_dataset import AudioClipDataset, ManifestAudioDataset
from ..data.packed import is_packed, meta_path
from ..data.packed_dataset import PackedAudioDataset

logger = logging.getLogger(__name__)


@dataclass
class LogmelPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "folder holding the manifests <split>.tsv, or a packed corpus (logmel-pack): each split is read packed where <split>.pack.json is there"})
    sample_rate: int = field(default=16000, metadata={"help": "audio is resampled to this rate (Hz) when read"})
    max_sample_size: int = field(default=160000, metadata={"help": "longer clips are randomly cropped to this many samples (10 s at 16 kHz)"})
    min_sample_size: int = field(
        default=min_clip_samples(16000),
        metadata={"help": "clips shorter than this many samples (manifest sizes) are left out, each named in the log (default: the 60 ms that give one model step at 16 kHz)"},
    )
    num_batch_buckets: int = field(
        default=0,
        metadata={
            "help": "pad each batch up to one of this many lengths (percentiles of the clip lengths) instead of to its "
            "longest clip (0: off). With model.compile, each length compiles one graph: set it when clips are shorter "
            "than max_sample_size, or every distinct batch length compiles its own"
        },
    )
    seed: int = field(default=II("common.seed"), metadata={"help": "seed of the random crops"})
    skip_unreadable_clips: bool = field(default=False, metadata={"help": "skip clips that cannot be read (missing, corrupt, NaN samples, length disagreeing with the manifest) with a warning each, counted in the logged unreadable_clips, instead of stopping with an error naming the manifest line"})


@register_task("logmel_pretraining", dataclass=LogmelPretrainingConfig)
class LogmelPretrainingTask(FairseqTask):
    cfg: LogmelPretrainingConfig

    @classmethod
    def setup_task(cls, cfg: LogmelPretrainingConfig, **kwargs):
        return cls(cfg)

    def manifest_path(self, split: str) -> str:
        path = os.path.join(self.cfg.data, f"{split}.tsv")
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no manifest for split '{split}': {path} does not exist (nor does a packed split, {meta_path(self.cfg.data, split)})"
            )
        return path

    def audio_dataset(self, split: str, shuffle: bool = True, skip_unreadable: bool = False) -> AudioClipDataset:
        """The clips of ``split``: packed if ``task.data`` holds ``<split>.pack.json``, else from ``<split>.tsv``."""
        kwargs = dict(
            sample_rate=self.cfg.sample_rate,
            max_sample_size=self.cfg.max_sample_size,
            min_sample_size=self.cfg.min_sample_size,
            shuffle=shuffle,
            seed=self.cfg.seed,
            num_buckets=self.cfg.num_batch_buckets,
            skip_unreadable=skip_unreadable,
        )
        if is_packed(self.cfg.data, split):
            return PackedAudioDataset(self.cfg.data, split, **kwargs)
        return ManifestAudioDataset(self.manifest_path(split), **kwargs)

    def load_dataset(self, split: str, task_cfg: Optional[FairseqDataclass] = None, **kwargs):
        self.datasets[split] = self.audio_dataset(split, skip_unreadable=self.cfg.skip_unreadable_clips)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's, after moving every Python object to the collector's permanent generation when workers will fork.

        A loader worker is a fork of this process: it shares its memory until a
        page is written. The cyclic garbage collector writes to the header of every
        object it examines, so its first full pass in a worker copied every page
        of the training process's Python objects into the worker (87 MB a worker
        with the 2-million-clip manifest; under 20 MB once frozen). Frozen objects are
        never collected, so only what exists now is frozen, after a collection.
        """
        num_workers = kwargs.get("num_workers", args[9] if len(args) > 9 else 0)
        if num_workers and num_workers > 0:
            gc.collect()
            gc.freeze()
        return super().get_batch_iterator(dataset, *args, **kwargs)

    def build_model(self, cfg: FairseqDataclass, from_checkpoint: bool = False):
        if getattr(cfg, "compile", False) and self.cfg.num_batch_buckets <= 0:
            logger.warning(
                "model.compile with task.num_batch_buckets=0: each distinct batch length compiles its own graph. "
                "Fine if every clip is at least task.max_sample_size long (one length); otherwise set num_batch_buckets"
            )
        return super().build_model(cfg, from_checkpoint)

    def max_positions(self):
        return None

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

"""Shared base of the fine-tuning tasks: labelled manifests, and metrics over a whole split."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist
from fairseq import metrics
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import meters
from fairseq.logging.meters import Meter
from omegaconf import II, open_dict

from ..data.labelled_dataset import LabelledAudioDataset
from ..data.labels import LabelVocabulary, read_label_file
from ..metrics import compute_metrics
from ..models.logmel_conformer_classifier import resolve_encoder
from .logmel_pretraining import LogmelPretrainingConfig, LogmelPretrainingTask


@dataclass
class LabelledAudioConfig(LogmelPretrainingConfig):
    labels: str = field(default="labels.txt", metadata={"help": "label vocabulary (one class per line, fixing the class order), relative to data"})
    train_fraction: float = field(default=1.0, metadata={"help": "fine-tune on this fraction of the training clips, drawn reproducibly from the seed (paper Table 1: 0.01 ... 1.0)"})
    class_balanced_sampling: bool = field(default=False, metadata={"help": "draw training clips so that classes appear about equally often (AudioSet Full)"})
    train_subset: str = field(default=II("dataset.train_subset"), metadata={"help": "the training split, set by dataset.train_subset"})


class ClipScoreMeter(Meter):
    """Collects clip scores and targets over a validation pass; metrics are computed once over the whole split.

    Clips are keyed by dataset id, so the padding batches fairseq repeats on
    uneven shards are counted once. Across processes the collected clips are
    gathered with ``all_gather_object``, which works on gloo and NCCL alike.

    A checkpoint keeps only ``multilabel`` (fairseq saves the meters of every
    aggregator, the "valid" one included); a restored meter starts empty. The
    validation metrics fairseq logs come from a fresh aggregator each time, so
    a resumed run logs what an uninterrupted one does.
    """

    def __init__(self, multilabel: bool = False):
        self.multilabel = multilabel
        self.reset()

    def reset(self) -> None:
        self.scores: Dict[int, np.ndarray] = {}
        self.targets: Dict[int, np.ndarray] = {}
        self._metrics: Optional[Dict[str, float]] = None

    def update(self, ids: torch.Tensor, scores: torch.Tensor, targets: torch.Tensor) -> None:
        for clip, score, target in zip(ids.tolist(), scores.float().cpu().numpy(), targets.float().cpu().numpy()):
            self.scores[clip] = score
            self.targets[clip] = target
        self._metrics = None

    def state_dict(self) -> Dict:
        return {"multilabel": self.multilabel}

    def load_state_dict(self, state_dict: Dict) -> None:
        self.multilabel = state_dict["multilabel"]
        self.reset()

    def metrics(self) -> Dict[str, float]:
        if self._metrics is None:
            scores, targets = dict(self.scores), dict(self.targets)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                gathered: List = [None] * dist.get_world_size()
                dist.all_gather_object(gathered, (self.scores, self.targets))
                for rank_scores, rank_targets in gathered:
                    scores.update(rank_scores)
                    targets.update(rank_targets)
            ids = sorted(scores)
            self._metrics = compute_metrics(np.stack([scores[i] for i in ids]), np.stack([targets[i] for i in ids]), self.multilabel)
        return self._metrics

    @property
    def smoothed_value(self) -> float:
        return float(len(self.scores))


# fairseq restores a checkpoint's meters (MetersDict.load_state_dict) by looking each class name up in
# fairseq.logging.meters and calling it without arguments: without this name there, a fine-tuning run cannot resume
# (KeyError: 'ClipScoreMeter'), from its own checkpoints or from those written before this line.
meters.ClipScoreMeter = ClipScoreMeter


class LabelledAudioTask(LogmelPretrainingTask):
    """Fine-tuning on ``<split>.tsv`` manifests (or a packed corpus) with ``<split>.labels`` label files and a ``labels.txt`` vocabulary.

    The criterion hands per-clip scores to :meth:`valid_step` (keys ``_scores``
    and ``_targets`` of the logging output); they are collected in a
    :class:`ClipScoreMeter`, so the validation metrics (``mAP``, ``accuracy``, ...)
    cover the whole split and can serve as ``checkpoint.best_checkpoint_metric``.
    """

    cfg: LabelledAudioConfig
    multilabel: bool

    def __init__(self, cfg: LabelledAudioConfig):
        super().__init__(cfg)
        self._vocabulary: Optional[LabelVocabulary] = None

    @property
    def vocabulary(self) -> LabelVocabulary:
        # Read on first use: a fine-tuned checkpoint carries its class names and reloads without the data.
        if self._vocabulary is None:
            self._vocabulary = LabelVocabulary.read(os.path.join(self.cfg.data, self.cfg.labels))
        return self._vocabulary

    def load_dataset(self, split: str, task_cfg: Optional[FairseqDataclass] = None, **kwargs):
        is_train = split == self.cfg.train_subset
        # Validation metrics must cover the whole split: only training may skip clips.
        audio = self.audio_dataset(split, shuffle=is_train, skip_unreadable=self.cfg.skip_unreadable_clips and is_train)
        labels = read_label_file(
            os.path.join(self.cfg.data, f"{split}.labels"), self.vocabulary, audio.num_entries, not self.multilabel
        )
        self.datasets[split] = LabelledAudioDataset(
            audio,
            labels,
            len(self.vocabulary),
            fraction=self.cfg.train_fraction if is_train else 1.0,
            balanced=self.cfg.class_balanced_sampling and is_train,
            seed=self.cfg.seed,
        )

    def build_model(self, cfg: FairseqDataclass, from_checkpoint: bool = False):
        # fairseq hands the model a merged copy of cfg: what the checkpoint must keep (the class names, the
        # encoder's config) is written here, into the config it saves, and the pre-trained weights are loaded after.
        encoder_weights = None
        if not from_checkpoint:
            with open_dict(cfg):
                cfg.class_names = list(self.vocabulary.names)
                cfg.multilabel = self.multilabel
            encoder_weights = resolve_encoder(cfg)
        model = super().build_model(cfg, from_checkpoint)
        if encoder_weights is not None:
            model.load_encoder_weights(encoder_weights)
        return model

    def valid_step(self, sample, model, criterion):
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        scores, targets = logging_output.pop("_scores"), logging_output.pop("_targets")
        metrics.log_custom(lambda: ClipScoreMeter(self.multilabel), "_clip_scores", sample["id"], scores, targets)
        logging_output["_scored_clips"] = len(sample["id"])
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs: List[Dict], criterion) -> None:
        super().reduce_metrics(logging_outputs, criterion)
        if not any(log.get("_scored_clips", 0) for log in logging_outputs):
            return
        names = ["mAP", "mAUC", "d_prime", "lwlrap"] if self.multilabel else ["accuracy", "top1", "top5", "mAP"]
        for name in names:
            metrics.log_derived(name, lambda meters, name=name: split_metric(meters, name))


def split_metric(meters: Dict[str, Meter], name: str) -> float:
    # fairseq also reduces each batch in a throw-away aggregator that never saw the clip scores.
    if "_clip_scores" not in meters:
        return float("nan")
    return round(meters["_clip_scores"].metrics()[name], 5)

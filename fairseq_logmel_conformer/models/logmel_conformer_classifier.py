"""``logmel_conformer_classifier``: the pre-trained conformer fine-tuned with a pooling head (paper Sec. 3-4)."""
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import checkpoint_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import II, DictConfig, OmegaConf, open_dict

from ..modules.augment import mixup, temporal_jitter, time_mask
from ..modules.compile import StepCompiler
from .logmel_conformer import (
    COMPILE_MODE_CHOICES,
    COMPILE_MODE_HELP,
    COMPILE_SHAPES_HELP,
    LogmelConformerConfig,
    LogmelConformerModel,
    masked_mean,
)

POOLING_CHOICES = ChoiceEnum(["mean", "linear_softmax"])


@dataclass
class LogmelConformerClassifierConfig(FairseqDataclass):
    pretrained_path: Optional[str] = field(default=None, metadata={"help": "checkpoint of a logmel_conformer pre-training run; its architecture and weights initialise the encoder"})
    encoder: Any = field(default=None, metadata={"help": "the encoder's logmel_conformer config. Filled from pretrained_path (and kept in the fine-tuned checkpoint, so it reloads alone); set it (e.g. +encoder=cfS) to train from scratch"})
    sample_rate: int = field(default=II("task.sample_rate"), metadata={"help": "input sample rate in Hz, set by the task; must match the encoder's"})
    pooling: POOLING_CHOICES = field(default="mean", metadata={"help": "mean: mean of frame embeddings then a linear layer; linear_softmax: frame-level sigmoid probabilities pooled as sum(p^2)/sum(p) (AudioSet)"})
    encoder_output_dropout: float = field(default=0.0, metadata={"help": "dropout on the encoder output before the head (regularises small datasets)"})
    freeze_encoder_updates: int = field(default=0, metadata={"help": "train only the head for this many updates, then the whole encoder"})
    reinit_last_blocks: int = field(
        default=0,
        metadata={
            "help": "start the last N conformer blocks from random weights instead of pretrained_path's: the blocks next "
            "to the contrastive head learn to predict its targets and can transfer worse than random ones (Pasad et al., "
            "2021, for wav2vec 2.0). No effect when training from scratch"
        },
    )
    jitter_samples: int = field(default=200, metadata={"help": "training: shift each waveform by a random integer in [-jitter_samples, jitter_samples] (0: off)"})
    time_mask_fraction: float = field(default=0.2, metadata={"help": "training: one SpecAugment time mask of up to this fraction of the clip (2 s per 10 s; 0: off)"})
    mixup_alpha: float = field(default=0.5, metadata={"help": "training: mix log-mels within the batch with weight max(a, 1-a), a ~ Beta(alpha, alpha); labels unchanged (0: off)"})
    class_names: List[str] = field(default_factory=list, metadata={"help": "class names in output order, set by the task from its label vocabulary"})
    multilabel: bool = field(default=False, metadata={"help": "sigmoid outputs (tagging) instead of softmax (classification), set by the task"})
    compile: bool = field(
        default=False,
        metadata={
            "help": "compile the training step with torch.compile: the encoder after the frontend (feature encoder and "
            "conformer, forward and backward), in both passes of the consistency loss; the frontend, augmentations, "
            "head, evaluation and inference stay eager. The encoder config's own compile field is not read. " + COMPILE_SHAPES_HELP
        },
    )
    compile_mode: COMPILE_MODE_CHOICES = field(default="default", metadata={"help": COMPILE_MODE_HELP})


def encoder_config(cfg: LogmelConformerClassifierConfig) -> DictConfig:
    """``cfg.encoder`` over the ``logmel_conformer`` defaults: every field of the encoder's config."""
    return OmegaConf.merge(OmegaConf.structured(LogmelConformerConfig(sample_rate=cfg.sample_rate)), cfg.encoder)


def resolve_encoder(cfg: LogmelConformerClassifierConfig) -> Optional[Dict[str, torch.Tensor]]:
    """Write the encoder's whole config into ``cfg.encoder``; return the weights of ``cfg.pretrained_path`` to load.

    The fine-tuning tasks call this on the config fairseq saves (models get a
    merged copy), so that every fine-tuned checkpoint holds its encoder's config,
    every field of it (a default changed later must not change how it loads),
    and reloads without the pre-training checkpoint (fairseq's ``w2v_args``
    pattern). Returns None when training from scratch.
    """
    state = None
    if cfg.pretrained_path:
        state = checkpoint_utils.load_checkpoint_to_cpu(cfg.pretrained_path)
        model_cfg = state["cfg"]["model"]
        if model_cfg.get("_name") != "logmel_conformer":
            raise ValueError(f"{cfg.pretrained_path} holds a {model_cfg.get('_name')!r} model, expected a logmel_conformer pre-training checkpoint")
        with open_dict(cfg):
            cfg.encoder = model_cfg
    elif cfg.encoder is None:
        raise ValueError("set model.pretrained_path, or an encoder architecture (e.g. +encoder=cfS) to train from scratch")
    with open_dict(cfg):
        cfg.encoder = OmegaConf.to_container(encoder_config(cfg), resolve=True)
    return None if state is None else state["model"]


@register_model("logmel_conformer_classifier", dataclass=LogmelConformerClassifierConfig)
class LogmelConformerClassifier(BaseFairseqModel):
    """Waveform (B, S) -> augmented log-mel -> conformer frames (B, T', d) -> class probabilities (B, C)."""

    def __init__(self, cfg: LogmelConformerClassifierConfig):
        super().__init__()
        if not cfg.class_names:
            raise ValueError("model.class_names is empty: the fine-tuning task sets it from its label vocabulary")
        encoder_cfg = encoder_config(cfg)
        if encoder_cfg.sample_rate != cfg.sample_rate:
            raise ValueError(f"the encoder was pre-trained at {encoder_cfg.sample_rate} Hz but the task reads audio at {cfg.sample_rate} Hz")
        if not 0 <= cfg.reinit_last_blocks <= encoder_cfg.encoder_layers:
            raise ValueError(f"model.reinit_last_blocks={cfg.reinit_last_blocks}, but the encoder has {encoder_cfg.encoder_layers} blocks")
        self.cfg = cfg
        self.class_names = list(cfg.class_names)
        self.multilabel = cfg.multilabel
        self.encoder = LogmelConformerModel(encoder_cfg)
        self.encoder.remove_pretraining_modules()
        # Fine-tuning compiles as its own config says, whatever the pre-training run did.
        self.encoder.step_compiler = StepCompiler.from_config(cfg)
        self.dropout = nn.Dropout(cfg.encoder_output_dropout)
        self.head = nn.Linear(encoder_cfg.encoder_dim, len(self.class_names))
        self.num_updates = 0

    @classmethod
    def build_model(cls, cfg: LogmelConformerClassifierConfig, task=None):
        return cls(cfg)

    def load_encoder_weights(self, state: Dict[str, torch.Tensor]) -> None:
        """Load a ``logmel_conformer`` state dict into the encoder, less its pre-training-only parameters and
        its last ``reinit_last_blocks`` blocks, which keep the random weights they were built with."""
        blocks = self.encoder.context_encoder.layers
        restarted = range(len(blocks) - self.cfg.reinit_last_blocks, len(blocks))
        # Built in the same order as a scratch run's with the same seed, these are that run's initial blocks.
        fresh = {index: copy.deepcopy(blocks[index].state_dict()) for index in restarted}
        kept = {k: v for k, v in state.items() if not k.startswith(LogmelConformerModel.PRETRAINING_ONLY)}
        self.encoder.load_state_dict(kept)
        for index, weights in fresh.items():
            blocks[index].load_state_dict(weights)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.encoder.adopt_feature_norm(state_dict, prefix="encoder.")
        return super().load_state_dict(state_dict, strict, model_cfg, args)

    @property
    def step_compiler(self) -> StepCompiler:
        """How the training step compiles (``compile``): the encoder's, which this model's config set."""
        return self.encoder.step_compiler

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def augment(self, frames: torch.Tensor, frame_lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """Training's log-mel augmentations, in order: one time mask, then mixup within the batch. (B, T, F) -> (B, T, F)."""
        if self.cfg.time_mask_fraction > 0:
            frames, _ = time_mask(frames, frame_lengths, self.cfg.time_mask_fraction)
        if self.cfg.mixup_alpha > 0 and frames.shape[0] > 1:
            frames, _, _ = mixup(frames, self.cfg.mixup_alpha)
        return frames

    def frame_embeddings(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) waveform -> (B, T', d) frame embeddings after dropout, (B, T') step padding mask or None.

        In training the waveform is jittered and the log-mel augmented (:meth:`augment`) between the encoder's stages.
        """
        frozen = self.training and self.num_updates < self.cfg.freeze_encoder_updates
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            if self.training and self.cfg.jitter_samples > 0:
                lengths = None if padding_mask is None else (~padding_mask).sum(1)
                source, _ = temporal_jitter(source, lengths, self.cfg.jitter_samples)
            frames, frame_lengths = self.encoder.logmel(source, padding_mask)
            if self.training:
                frames = self.augment(frames, frame_lengths)
            encode = self.encoder.step_compiler.wrap(self.encoder.encode_logmel, self)
            features, step_padding = encode(frames, frame_lengths)
        return self.dropout(features), step_padding

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
        """Returns ``probs`` (B, C) clip probabilities and ``logits`` (B, C), or None for linear softmax
        pooling, whose clip probabilities are not a sigmoid of anything."""
        features, step_padding = self.frame_embeddings(source, padding_mask)
        if self.cfg.pooling == "linear_softmax":
            frame_probs = torch.sigmoid(self.head(features).float())
            if step_padding is not None:
                frame_probs = frame_probs.masked_fill(step_padding[..., None], 0.0)
            probs = (frame_probs**2).sum(1) / frame_probs.sum(1).clamp(min=1e-7)
            return {"probs": probs, "logits": None}
        logits = self.head(masked_mean(features, step_padding)).float()
        probs = torch.sigmoid(logits) if self.multilabel else logits.softmax(-1)
        return {"probs": probs, "logits": logits}

    @torch.no_grad()
    def predict(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, S) waveform -> (B, C) class probabilities (eval mode is the caller's job)."""
        return self(source, padding_mask)["probs"]

    @torch.no_grad()
    def frame_probabilities(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) waveform -> (B, T', C) per-frame class probabilities (the head applied to each frame), padding mask."""
        features, step_padding = self.frame_embeddings(source, padding_mask)
        logits = self.head(features).float()
        probs = torch.sigmoid(logits) if self.multilabel or self.cfg.pooling == "linear_softmax" else logits.softmax(-1)
        return probs, step_padding

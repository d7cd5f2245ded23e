"""``logmel_conformer``: the paper's self-supervised conformer (logmel -> stacked frames -> masked conformer).

The encoder's surface, which fine-tuning, inference, export and HEAR use:

- ``geometry``: a :class:`~..modules.frontend.StepGeometry` (sample rate,
  samples per step, timestamp of each step, minimum clip length);
- ``extract_features(source, padding_mask)``: frame embeddings (B, T', d), the
  composition of its two stages ``logmel`` (waveform -> log-mel frames) and
  ``encode_logmel`` (frames -> embeddings), between which fine-tuning inserts
  its augmentations;
- ``forward``: the masked pre-training pass.

Every ``source`` is a (B, S) waveform, float or int16 16-bit PCM (a packed
corpus's batches), converted to float by the frontend on the model's device.

With ``compile`` on, training compiles the pass after the frontend (:meth:`masked_pass`) with
``torch.compile`` (see :mod:`~..modules.compile`); evaluation, inference and export stay eager.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from omegaconf import II

from ..modules.compile import COMPILE_MODES, StepCompiler
from ..modules.conformer import ConformerContextEncoder
from ..modules.frontend import FEATURE_NORMS, LogmelFrontend, StackedFeatureEncoder, StepGeometry, lengths_to_padding_mask
from ..modules.masking import compute_span_mask, max_masked_steps

FEATURE_NORM_CHOICES = ChoiceEnum(list(FEATURE_NORMS))
COMPILE_MODE_CHOICES = ChoiceEnum(list(COMPILE_MODES))
COMPILE_SHAPES_HELP = (
    "Graphs are compiled per padded batch length, the batch size dynamic: with clips of mixed lengths set "
    "task.num_batch_buckets, or every distinct length compiles its own graph"
)
COMPILE_HELP = (
    "compile the training step with torch.compile: feature encoder, span masking, conformer and contrastive loss, "
    "forward and backward, their element-wise work fused; the frontend, evaluation and inference stay eager. "
    + COMPILE_SHAPES_HELP
)
COMPILE_MODE_HELP = (
    "how compile compiles: default (inductor), reduce-overhead (inductor and CUDA graphs, for small batches where "
    "the host sets the pace; one recording per batch shape, so fixed batch sizes and lengths), "
    "max-autotune-no-cudagraphs / max-autotune (inductor benchmarking its kernel choices while compiling, minutes), "
    "aot_eager (the same graphs run by eager kernels: for checking graph breaks and recompiles, no speed-up)"
)


@dataclass
class LogmelConformerConfig(FairseqDataclass):
    sample_rate: int = field(default=II("task.sample_rate"), metadata={"help": "input sample rate in Hz, set by the task"})
    n_mels: int = field(default=64, metadata={"help": "mel bins of the log-mel frontend"})
    win_ms: float = field(default=64.0, metadata={"help": "STFT window (and FFT size) in milliseconds"})
    hop_ms: float = field(default=20.0, metadata={"help": "STFT hop in milliseconds"})
    stack_frames: int = field(default=4, metadata={"help": "consecutive log-mel frames stacked into one latent step"})
    feature_norm: FEATURE_NORM_CHOICES = field(
        default="global",
        metadata={
            "help": "normalisation of each stacked step before the projection to Z. global: (logmel - logmel_mean) / "
            "logmel_std with fixed scalars (AST, BEATs), which keeps each step's level, so a faint background and a "
            "loud event stay apart; layer: layer norm over the step (wav2vec 2.0's CNN features), which removes it"
        },
    )
    logmel_mean: float = field(
        default=-3.55,
        metadata={"help": "global feature_norm: the log-mel mean subtracted (measured on real non-speech audio)"},
    )
    logmel_std: float = field(
        default=5.68,
        metadata={"help": "global feature_norm: the log-mel standard deviation divided by (measured like logmel_mean)"},
    )
    latent_dim: int = field(default=256, metadata={"help": "dimension of the latent Z (feature encoder output and contrastive space)"})
    encoder_dim: int = field(default=256, metadata={"help": "conformer model dimension d (cf_S 256, cf_L 768)"})
    encoder_layers: int = field(default=12, metadata={"help": "number of conformer blocks"})
    encoder_heads: int = field(default=8, metadata={"help": "attention heads per block (cf_S 8, cf_L 12)"})
    encoder_ffn_dim: int = field(default=1024, metadata={"help": "hidden size of each half-step feed-forward module"})
    first_kernel_size: int = field(default=31, metadata={"help": "depthwise convolution kernel of the first block"})
    kernel_size: int = field(default=15, metadata={"help": "depthwise convolution kernel of the other blocks"})
    dropout: float = field(default=0.1, metadata={"help": "dropout inside the conformer blocks"})
    mask_prob: float = field(default=0.3, metadata={"help": "expected fraction of latent steps masked during pre-training"})
    mask_length: int = field(default=3, metadata={"help": "length of each masked span, in latent steps (80 ms each)"})
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP})
    compile_mode: COMPILE_MODE_CHOICES = field(default="default", metadata={"help": COMPILE_MODE_HELP})


@register_model("logmel_conformer", dataclass=LogmelConformerConfig)
class LogmelConformerModel(BaseFairseqModel):
    """Waveform (B, S) -> logmel (B, 4T', 64) -> latent Z (B, T', 256) -> masked -> context C (B, T', 256)."""

    def __init__(self, cfg: LogmelConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.frontend = LogmelFrontend(cfg.sample_rate, cfg.n_mels, cfg.win_ms, cfg.hop_ms)
        self.feature_encoder = StackedFeatureEncoder(
            cfg.n_mels, cfg.stack_frames, cfg.latent_dim, cfg.feature_norm, cfg.logmel_mean, cfg.logmel_std
        )
        self.mask_embedding = nn.Parameter(torch.empty(cfg.latent_dim).uniform_())
        kernel_sizes = [cfg.first_kernel_size] + [cfg.kernel_size] * (cfg.encoder_layers - 1)
        self.context_encoder = ConformerContextEncoder(
            cfg.latent_dim, cfg.encoder_dim, cfg.encoder_ffn_dim, cfg.encoder_heads, kernel_sizes, cfg.dropout
        )
        # Plain numbers for the compiled pass: a traced read of fairseq's omegaconf config would run its Python.
        self.mask_prob = float(cfg.mask_prob)
        self.mask_length = int(cfg.mask_length)
        # A fine-tuning model replaces this with one from its own config.
        self.step_compiler = StepCompiler.from_config(cfg)

    @classmethod
    def build_model(cls, cfg: LogmelConformerConfig, task=None):
        return cls(cfg)

    # TorchScript compiles module properties; the geometry is host-side arithmetic for the callers.
    __jit_unused_properties__ = ["geometry", "embedding_dim"]
    __jit_ignored_attributes__ = ["step_compiler"]

    @property
    def geometry(self) -> StepGeometry:
        """Where the output steps lie in the input waveform (80 ms steps at the paper's settings)."""
        return StepGeometry(self.frontend.sample_rate, self.frontend.hop_length, self.feature_encoder.stack)

    @property
    def embedding_dim(self) -> int:
        """d, the size of each frame embedding of :meth:`extract_features`."""
        return self.cfg.encoder_dim

    def logmel(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) waveform, (B, S) sample padding mask -> log-mel frames (B, T, n_mels) fp32, (B,) frame counts or None."""
        lengths = None if padding_mask is None else (~padding_mask).sum(1)
        return self.frontend(source, lengths)

    def encode_logmel(
        self, frames: torch.Tensor, frame_lengths: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, T, n_mels) log-mel, (B,) frame counts -> frame embeddings (B, T // stack, encoder_dim), (B, T') padding mask."""
        latents, step_padding = self.latents(frames, frame_lengths)
        return self.context_encoder(latents, self.attention_padding(step_padding), project=False), step_padding

    def extract_features(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Unmasked frame embeddings: (B, S) waveform -> (B, T', encoder_dim), (B, T') padding mask (or None).

        Step ``t`` is centred at ``geometry.timestamps(t, 1)`` seconds.
        """
        frames, frame_lengths = self.logmel(source, padding_mask)
        return self.encode_logmel(frames, frame_lengths)

    def latents(
        self, frames: torch.Tensor, frame_lengths: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, T, n_mels) log-mel, (B,) frame counts -> latent Z (B, T // stack, latent_dim), (B, T') step padding mask."""
        latents, step_lengths = self.feature_encoder(frames, frame_lengths)
        if step_lengths is None:
            return latents, None
        step_padding = lengths_to_padding_mask(step_lengths, latents.shape[1])
        # A clip too short for one step would leave attention nothing to attend to (NaN);
        # let it attend to its padding instead: it has no valid step, so its output is never used.
        step_padding = step_padding & (step_lengths > 0)[:, None]
        return latents, step_padding

    # Masked pre-training is not scriptable (config access, random spans); export uses extract_features.
    @torch.jit.unused
    def forward(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = True
    ) -> Dict[str, Any]:
        """Pre-training pass.

        Returns a dict with ``context`` (B, T', latent_dim), ``targets`` (B, T',
        latent_dim, the unmasked Z), ``mask`` (B, T') True at masked steps (None
        when ``mask`` is False), ``max_masked_steps`` (int, a bound on any clip's
        masked steps, or None) and ``padding_mask`` (B, T') True at padding (or None).
        """
        frames, frame_lengths = self.logmel(source, padding_mask)
        context, latents, time_mask, step_padding = self.step_compiler.wrap(self.masked_pass, self)(frames, frame_lengths, mask)
        steps = latents.shape[1]
        return {
            "context": context,
            "targets": latents,
            "mask": time_mask,
            "max_masked_steps": max_masked_steps(steps, self.mask_prob, self.mask_length) if mask else None,
            "padding_mask": step_padding,
        }

    @torch.jit.unused
    def masked_pass(
        self, frames: torch.Tensor, frame_lengths: Optional[torch.Tensor], mask: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Pre-training after the frontend: (B, T, n_mels) log-mel, (B,) frame counts -> context, targets (B, T',
        latent_dim), mask (B, T') or None, step padding mask (B, T') or None (see :meth:`forward`). What
        ``compile`` compiles."""
        latents, step_padding = self.latents(frames, frame_lengths)
        batch, steps, _ = latents.shape
        time_mask = None
        inputs = latents
        if mask:
            lengths = torch.full((batch,), steps, device=latents.device) if step_padding is None else (~step_padding).sum(1)
            time_mask = compute_span_mask(lengths, steps, self.mask_prob, self.mask_length)
            inputs = torch.where(time_mask[..., None], self.mask_embedding.to(latents.dtype), latents)
        context = self.context_encoder(inputs, self.attention_padding(step_padding))
        return context, latents, time_mask, step_padding

    def attention_padding(self, step_padding: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The (B, T') padding mask attention gets: None for an all-False one in inference, so that
        scaled_dot_product_attention may take the flash kernel; as it is in training, whose collater already
        drops the mask of a batch without padding, and where the check would cost a host-device sync on every
        padded batch."""
        if step_padding is None or (not self.training and not bool(step_padding.any())):
            return None
        return step_padding

    PRETRAINING_ONLY = ("mask_embedding", "context_encoder.proj_out.")

    def remove_pretraining_modules(self) -> None:
        """Drop what only the contrastive task uses (the mask embedding, the projection back to Z).

        Fine-tuning never uses them, and parameters without gradients break DDP.
        """
        self.mask_embedding = None
        self.context_encoder.proj_out = None

    def adopt_feature_norm(self, state_dict: Dict[str, torch.Tensor], prefix: str = "") -> None:
        """Take the feature normalisation ``state_dict`` was trained with: a checkpoint from before
        ``feature_norm`` existed holds the layer norm that was then the only one, and its config does not say so."""
        if prefix + "feature_encoder.layer_norm.weight" in state_dict and self.cfg.feature_norm != "layer":
            self.cfg.feature_norm = "layer"
            cfg = self.cfg
            layer = StackedFeatureEncoder(cfg.n_mels, cfg.stack_frames, cfg.latent_dim, "layer")
            self.feature_encoder = layer.to(self.feature_encoder.proj.weight)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.adopt_feature_norm(state_dict)
        return super().load_state_dict(state_dict, strict, model_cfg, args)


def masked_mean(features: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """(B, T, C), (B, T) True at padding -> (B, C) mean over valid steps."""
    if padding_mask is None:
        return features.mean(1)
    valid = (~padding_mask).to(features.dtype)[..., None]
    return (features * valid).sum(1) / valid.sum(1).clamp(min=1.0)


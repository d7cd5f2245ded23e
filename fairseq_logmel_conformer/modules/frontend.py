"""Log-mel frontend and frame-stacking feature encoder (paper Sec. 2.2).

The frontend runs inside the model, on the training device, so data loaders
only read and crop waveforms.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torchaudio

# log(mel + floor): digital silence maps to log(1e-6) ~ -13.8 instead of -inf.
LOG_FLOOR = 1e-6
# How StackedFeatureEncoder normalises each stacked step (the model config's feature_norm choices).
FEATURE_NORMS = ("layer", "global")


def float_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """A waveform as float32: int16 is 16-bit PCM (value / 32768, as soundfile reads 16-bit files), other dtypes keep their values."""
    if waveform.dtype == torch.int16:
        return waveform.float() / 32768.0
    return waveform.float()


def lengths_to_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (B, max_len) mask, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


@dataclass(frozen=True)
class StepGeometry:
    """Where an encoder's output steps lie in its input waveform.

    The frontend's centred STFT gives ``1 + S // hop_length`` frames for ``S``
    samples and frame ``f`` is centred at sample ``f * hop_length``; step ``t``
    stacks frames ``stack * t .. stack * t + stack - 1``. So a step spans
    ``samples_per_step`` samples, is centred at ``first_timestamp + t *
    step_seconds`` seconds, and a clip needs ``min_samples`` for one step.
    """

    sample_rate: int
    hop_length: int
    stack: int

    @property
    def samples_per_step(self) -> int:
        return self.hop_length * self.stack

    @property
    def step_seconds(self) -> float:
        return self.samples_per_step / self.sample_rate

    @property
    def first_timestamp(self) -> float:
        """Centre of step 0 in seconds: the mean of the centres of its frames, 0 .. (stack - 1) hops."""
        return (self.stack - 1) / 2 * self.hop_length / self.sample_rate

    @property
    def min_samples(self) -> int:
        """The fewest samples that give one step: ``stack`` frames need ``(stack - 1) * hop_length`` samples."""
        return (self.stack - 1) * self.hop_length

    def num_steps(self, num_samples: int) -> int:
        """Steps the encoder gives for a clip of ``num_samples``."""
        return (1 + num_samples // self.hop_length) // self.stack

    def timestamps(self, first_step: int, count: int) -> np.ndarray:
        """(count,) centres in seconds of steps ``first_step ..``, float64."""
        return self.first_timestamp + np.arange(first_step, first_step + count, dtype=np.float64) * self.step_seconds


class LogmelFrontend(nn.Module):
    """Waveform (B, S) at ``sample_rate`` -> log-mel (B, T, n_mels).

    The waveform is float (full scale 1) or int16 16-bit PCM (:func:`float_waveform`),
    which a packed corpus's batches are: they become float here, on the device.

    The STFT is centred with zero ("constant") padding, so frame ``t`` covers
    samples ``[t*hop - win/2, t*hop + win/2)`` and a clip of ``S`` samples gives
    ``1 + S // hop`` frames. Zero padding (rather than reflection) makes the
    frames of a clip identical whether it is processed alone or zero-padded in
    a batch: the frontend is padding invariant.

    Normalisation: natural log of the power mel spectrogram of the [-1, 1]
    waveform with a floor of 1e-6; no per-clip statistics (they would break
    padding invariance). The feature encoder normalises each stacked step.
    """

    def __init__(self, sample_rate: int = 16000, n_mels: int = 64, win_ms: float = 64.0, hop_ms: float = 20.0):
        super().__init__()
        self.sample_rate = sample_rate
        self.n_mels = n_mels
        # An attribute, not the global: TorchScript cannot read module-level floats.
        self.log_floor = LOG_FLOOR
        self.win_length = round(sample_rate * win_ms / 1000)
        self.hop_length = round(sample_rate * hop_ms / 1000)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=self.win_length,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=n_mels,
            center=True,
            pad_mode="constant",
            power=2.0,
        )

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        return 1 + torch.div(num_samples, self.hop_length, rounding_mode="floor")

    def forward(self, waveform: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, S) waveform, optional (B,) sample counts -> (B, T, n_mels), (B,) frame counts."""
        if waveform.dim() != 2:
            raise ValueError(f"expected waveform of shape (B, S), got {list(waveform.shape)}")
        if torch.jit.is_scripting():
            # TorchScript needs a constant autocast device; scripted models run without autocast anyway.
            mel = self.mel(float_waveform(waveform))
        else:
            # The STFT runs in fp32 even under autocast or a model cast to half (fairseq's fp16/bf16):
            # fp16 power spectra overflow. .float() brings the window and filterbank back to fp32, once
            # (the dtype is known on the host, and a compiled graph cannot trace module conversion).
            if self.mel.spectrogram.window.dtype != torch.float32 or self.mel.mel_scale.fb.dtype != torch.float32:
                self.mel.float()
            with torch.autocast(device_type=waveform.device.type, enabled=False):
                mel = self.mel(float_waveform(waveform))
        logmel = torch.log(mel + self.log_floor).transpose(1, 2)
        return logmel, (self.num_frames(lengths) if lengths is not None else None)


class StackedFeatureEncoder(nn.Module):
    """Stack ``stack`` consecutive frames, normalise and project: (B, T, F) -> (B, T // stack, dim).

    ``norm="layer"`` layer-normalises each stacked step, as wav2vec 2.0 does its
    CNN features: every step gets zero mean and unit variance, so its level is
    lost (a faint background step looks like a loud event). ``norm="global"``
    standardises every value with the same fixed scalars, ``(x - mean) / std``
    (as AST and BEATs do), which keeps the level of each step and stays padding
    invariant. Trailing frames that do not fill a stack are dropped.
    """

    def __init__(
        self, in_features: int = 64, stack: int = 4, dim: int = 256, norm: str = "layer", mean: float = 0.0, std: float = 1.0
    ):
        super().__init__()
        if norm not in FEATURE_NORMS:
            raise ValueError(f"norm must be {' or '.join(map(repr, FEATURE_NORMS))}, got {norm!r}")
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.stack = stack
        # One forward path for both: "layer" standardises with (0, 1), "global" skips the layer norm.
        self.offset, self.scale = (mean, std) if norm == "global" else (0.0, 1.0)
        self.layer_norm = nn.LayerNorm(in_features * stack) if norm == "layer" else nn.Identity()
        self.proj = nn.Linear(in_features * stack, dim)

    def num_steps(self, num_frames: torch.Tensor) -> torch.Tensor:
        return torch.div(num_frames, self.stack, rounding_mode="floor")

    def forward(self, frames: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(B, T, F) frames, optional (B,) frame counts -> (B, T', dim), (B,) step counts."""
        batch, num_frames, num_features = frames.shape
        steps = num_frames // self.stack
        if steps == 0:
            raise ValueError(
                f"need at least {self.stack} frames to stack, got input of shape {list(frames.shape)}"
            )
        stacked = frames[:, : steps * self.stack].reshape(batch, steps, self.stack * num_features)
        stacked = (stacked - self.offset) / self.scale
        # The fp32 log-mel meets the model's dtype here (half under fairseq's fp16/bf16 training).
        stacked = stacked.to(self.proj.weight.dtype)
        return self.proj(self.layer_norm(stacked)), (self.num_steps(lengths) if lengths is not None else None)

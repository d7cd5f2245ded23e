"""Fine-tuning augmentations of Sec. 4.1: temporal jitter, one SpecAugment time mask, and mixup.

All functions are pure and vectorised over the batch: they allocate on the input's
device, draw from ``generator`` when one is given (it must live on that device),
and never loop over clips in Python. Applying them only in training mode is the
caller's job.
"""
from typing import Optional, Tuple

import torch

from .frontend import lengths_to_padding_mask


def _check_lengths(lengths: Optional[torch.Tensor], batch: int, name: str) -> None:
    if lengths is not None and lengths.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the batch, got {tuple(lengths.shape)}")


def shift_waveforms(
    waveform: torch.Tensor, shifts: torch.Tensor, lengths: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Shift the valid part of each clip by its own number of samples.

    Args:
        waveform: (B, S) audio, zero-padded after ``lengths``.
        shifts: (B,) integer shifts; positive delays the clip, negative advances it.
        lengths: (B,) valid sample counts, or None when no clip is padded.
    Returns:
        (B, S) tensor with ``out[b, t] = waveform[b, t - shifts[b]]`` where both
        ``t`` and ``t - shifts[b]`` lie inside ``[0, lengths[b])``, else zero.

    Samples pushed past either end of the valid region are dropped and the
    vacated ones are zero-filled, so clip lengths (and hence padding masks and
    label alignment) are unchanged and the padding stays zero.
    """
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (B, S), got shape {tuple(waveform.shape)}")
    batch, num_samples = waveform.shape
    if shifts.shape != (batch,):
        raise ValueError(f"shifts must have shape ({batch},) to match the batch, got {tuple(shifts.shape)}")
    _check_lengths(lengths, batch, "lengths")
    positions = torch.arange(num_samples, device=waveform.device)[None, :]
    source = positions - shifts.to(waveform.device)[:, None]
    limit = num_samples if lengths is None else lengths.to(waveform.device)[:, None]
    keep = (source >= 0) & (source < limit) & (positions < limit)
    shifted = waveform.gather(1, source.clamp(0, num_samples - 1))
    return torch.where(keep, shifted, torch.zeros_like(shifted))


def temporal_jitter(
    waveform: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
    max_shift: int = 200,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shift each raw clip by a random integer number of samples in ``[-max_shift, max_shift]``.

    Applied to the waveform before the log-mel front end; boundary handling is
    that of :func:`shift_waveforms` (zero-fill inside the valid region, lengths unchanged).

    Args:
        waveform: (B, S) audio.
        lengths: (B,) valid sample counts, or None when no clip is padded.
        max_shift: largest shift in samples (200 samples = 12.5 ms at 16 kHz).
    Returns:
        jittered: (B, S) shifted audio.
        shifts: (B,) long, the shift applied to each clip.
    """
    if waveform.dim() != 2:
        raise ValueError(f"waveform must be (B, S), got shape {tuple(waveform.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    shifts = torch.randint(
        -max_shift, max_shift + 1, (waveform.shape[0],), device=waveform.device, generator=generator
    )
    return shift_waveforms(waveform, shifts, lengths), shifts


def time_mask(
    frames: torch.Tensor,
    lengths: Optional[torch.Tensor] = None,
    max_fraction: float = 0.2,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SpecAugment with one time mask per clip and no frequency masks.

    A clip of ``L`` valid frames gets a mask of ``w`` frames, ``w`` uniform in
    ``[1, floor(max_fraction * L)]`` (the paper's "up to 2 s per 10 s" scaled to
    the clip; ``w = 0`` when that bound is 0), starting uniformly in
    ``[0, L - w]``. Masked frames are set to the clip's mean log-mel over its
    valid frames and bins, so the mask carries no level cue. Padding is never masked.

    Args:
        frames: (B, T, F) log-mel features.
        lengths: (B,) valid frame counts, or None when no clip is padded.
        max_fraction: largest mask length as a fraction of the clip's valid frames.
    Returns:
        masked: (B, T, F) features.
        mask: (B, T) bool, True at masked frames.
    """
    if frames.dim() != 3:
        raise ValueError(f"frames must be (B, T, F), got shape {tuple(frames.shape)}")
    if not 0.0 <= max_fraction <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    batch, num_frames, num_bins = frames.shape
    _check_lengths(lengths, batch, "lengths")
    device = frames.device
    if lengths is None:
        lengths = torch.full((batch,), num_frames, device=device, dtype=torch.long)
    lengths = lengths.to(device=device, dtype=torch.long)
    max_width = torch.floor(max_fraction * lengths.double()).long()
    draws = torch.rand(2, batch, device=device, generator=generator, dtype=torch.float64)
    width = torch.where(max_width > 0, (draws[0] * max_width).long() + 1, 0)
    start = (draws[1] * (lengths - width + 1)).long()
    positions = torch.arange(num_frames, device=device)[None, :]
    mask = (positions >= start[:, None]) & (positions < (start + width)[:, None])
    valid = ~lengths_to_padding_mask(lengths, num_frames)
    totals = (frames * valid[:, :, None]).sum(dim=(1, 2))
    means = totals / (lengths.clamp(min=1) * num_bins).to(frames.dtype)
    masked = torch.where(mask[:, :, None], means[:, None, None].to(frames.dtype), frames)
    return masked, mask


def mixup(
    frames: torch.Tensor, alpha: float = 0.5, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix each clip with a random other clip of the batch, keeping the first clip dominant.

    ``x_i'' = lam_i * x_i + (1 - lam_i) * x_perm(i)`` with ``perm`` a random
    permutation of the batch and ``lam_i = max(l_i, 1 - l_i)``, ``l_i ~ Beta(alpha, alpha)``,
    so ``lam_i >= 0.5``. Labels are not mixed: clip ``i`` keeps its own labels.
    Padded frames mix like the rest, so the caller keeps clip ``i``'s padding mask.

    Args:
        frames: (B, T, F) features (any (B, ...) tensor works).
        alpha: Beta concentration, > 0.
    Returns:
        mixed: same shape as ``frames``.
        lam: (B,) weight of each clip's own features, in [0.5, 1].
        perm: (B,) long, index of the clip mixed into each clip.
    """
    if frames.dim() < 1 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty batch (B, T, F), got shape {tuple(frames.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    batch = frames.shape[0]
    device = frames.device
    perm = torch.randperm(batch, device=device, generator=generator)
    concentration = torch.full((batch, 2), float(alpha), device=device, dtype=torch.float64)
    # torch.distributions.Beta cannot take a generator; this is the op it samples with.
    weights = torch._sample_dirichlet(concentration, generator=generator)[:, 0]
    lam = torch.maximum(weights, 1.0 - weights).to(frames.dtype)
    shape = (batch,) + (1,) * (frames.dim() - 1)
    mixed = lam.view(shape) * frames + (1.0 - lam).view(shape) * frames[perm]
    return mixed, lam, perm

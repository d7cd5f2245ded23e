"""Vectorised span masking and distractor sampling, computed on the tensors' device."""
from typing import Optional, Tuple

import torch


def compute_span_mask(
    lengths: torch.Tensor,
    max_len: int,
    mask_prob: float,
    span: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Boolean (B, max_len) mask of non-overlapping spans of ``span`` steps covering ~``mask_prob`` of each clip.

    wav2vec 2.0 draws ``mask_prob * L / span`` span starts and lets spans
    overlap, so fewer steps than asked end up masked. Here a clip of ``L``
    valid steps gets ``n = floor(mask_prob * L / span + u)`` spans (``u`` uniform,
    so the expected masked fraction is exactly ``mask_prob``) placed without
    overlap: choose ``n`` distinct slots among ``L - n * (span - 1)`` and shift
    the ``i``-th smallest by ``i * (span - 1)``. Padding is never masked.
    """
    device = lengths.device
    batch = lengths.shape[0]
    rand = torch.rand(batch, device=device, generator=generator)
    num_spans = torch.floor(mask_prob * lengths / span + rand).long()
    num_spans = torch.minimum(num_spans, torch.div(lengths, span, rounding_mode="floor"))
    # A static upper bound on spans per clip keeps this free of host-device syncs.
    max_spans = max_len // span
    if max_spans == 0:
        return torch.zeros(batch, max_len, dtype=torch.bool, device=device)
    num_slots = lengths - num_spans * (span - 1)
    keys = torch.rand(batch, max_len, device=device, generator=generator)
    keys.masked_fill_(torch.arange(max_len, device=device)[None, :] >= num_slots[:, None], 2.0)
    picks = keys.topk(max_spans, dim=1, largest=False).indices
    used = torch.arange(max_spans, device=device)[None, :] < num_spans[:, None]
    # Unused picks go to a sentinel column past the end, so used slots sort first.
    slots = torch.where(used, picks, max_len).sort(dim=1).values
    starts = slots + torch.arange(max_spans, device=device)[None, :] * (span - 1)
    positions = starts[:, :, None] + torch.arange(span, device=device)[None, None, :]
    positions = torch.where(used[:, :, None], positions, max_len).flatten(1)
    mask = torch.zeros(batch, max_len + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, positions.clamp(max=max_len), True)
    return mask[:, :max_len]


def sample_distractors(
    mask: torch.Tensor, num_distractors: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw distractors for every masked step from the other masked steps of its clip.

    Args:
        mask: (B, T) bool, True at masked steps.
    Returns:
        positives: (N, 2) long, (clip, step) of the N masked steps in row-major order.
        distractors: (N, K') long, step index (within the same clip) of each distractor,
            ``K' = min(num_distractors, max masked steps per clip - 1)``.
        valid: (N, K') bool, False where a clip had fewer than K' other masked steps.

    A step with at least ``num_distractors`` other masked steps in its clip gets
    that many, drawn uniformly without replacement; otherwise every other
    masked step of the clip is used once and the remaining slots are invalid.
    """
    positives = mask.nonzero()
    counts = mask.sum(1)
    max_count = int(counts.max()) if positives.shape[0] else 0
    width = min(num_distractors, max_count - 1)
    if width <= 0:
        empty = positives.new_zeros(positives.shape[0], 0)
        return positives, empty, empty.bool()
    clip = positives[:, 0]
    # Rank of each masked step among its clip's masked steps.
    rank = mask.long().cumsum(1)[clip, positives[:, 1]] - 1
    others = counts[clip] - 1
    # Masked step indices of each clip, left-aligned: (B, max_count).
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :max_count]
    keys = torch.rand(positives.shape[0], max_count - 1, device=mask.device, generator=generator)
    candidate = torch.arange(max_count - 1, device=mask.device)[None, :]
    keys.masked_fill_(candidate >= others[:, None], 2.0)
    chosen = keys.topk(width, dim=1, largest=False).indices
    valid = chosen < others[:, None]
    # Skip the step itself: ranks at or above its own shift up by one.
    chosen_rank = chosen + (chosen >= rank[:, None]).long()
    distractors = order[clip[:, None], chosen_rank.clamp(max=max_count - 1)]
    return positives, distractors, valid


def sample_cross_clip_distractors(
    clip: torch.Tensor, counts: torch.Tensor, num_distractors: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw distractors for every masked step from the masked steps of the *other* clips of the batch.

    Args:
        clip: (N,) long, clip index of each masked step, in row-major order (``mask.nonzero()[:, 0]``).
        counts: (B,) long, masked steps per clip (``mask.sum(1)``), so clip ``c`` owns a contiguous block.
    Returns:
        distractors: (N, num_distractors) long, rows into the N masked steps, drawn uniformly with
            replacement (as wav2vec 2.0's ``cross_sample_negatives``) from outside the step's own clip.
        valid: (N, num_distractors) bool, False for every slot when no other clip has a masked step.
    """
    total = clip.shape[0]
    starts = counts.cumsum(0) - counts
    pool = (total - counts)[clip]
    draws = torch.rand(total, num_distractors, device=clip.device, generator=generator)
    rows = (draws * pool[:, None]).long()
    # Skip the step's own clip: rows at or past its block shift over it.
    rows = rows + (rows >= starts[clip][:, None]).long() * counts[clip][:, None]
    valid = (pool > 0)[:, None].expand(total, num_distractors)
    return rows.clamp(max=max(total - 1, 0)), valid

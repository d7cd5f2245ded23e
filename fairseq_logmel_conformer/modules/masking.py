"""Vectorised span masking and distractor sampling on the tensors' device, with shapes fixed by static bounds
so that no step of pre-training waits for the device to say how many steps were masked."""
import math
from typing import Optional, Tuple

import torch


def _uniform(*shape, device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``torch.rand(*shape)``: without a generator, called without one, as a traced graph with a dynamic batch
    size needs (``rand``'s overload that takes a generator wants every size concrete)."""
    if generator is None:
        return torch.rand(*shape, device=device)
    return torch.rand(*shape, device=device, generator=generator)


def _max_spans(max_len: int, mask_prob: float, span: int) -> int:
    """Most spans :func:`compute_span_mask` places in a clip of at most ``max_len`` steps."""
    # floor(mask_prob * L / span + u) with u < 1 is at most ceil(mask_prob * max_len / span).
    return min(max_len // span, math.ceil(mask_prob * max_len / span))


def max_masked_steps(max_len: int, mask_prob: float, span: int) -> int:
    """Most steps :func:`compute_span_mask` masks in a clip of at most ``max_len`` steps (about ``mask_prob * max_len``).

    The contrastive loss sizes its tensors by this bound instead of by the
    largest count in the batch, which it could only read with a host-device sync.
    """
    return span * _max_spans(max_len, mask_prob, span)


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
    max_spans = _max_spans(max_len, mask_prob, span)
    if max_spans == 0:
        return torch.zeros(batch, max_len, dtype=torch.bool, device=device)
    rand = _uniform(batch, device=device, generator=generator)
    num_spans = torch.floor(mask_prob * lengths / span + rand).long()
    # The clamp to max_spans only catches float32 rounding past the bound, about once in a million clips.
    num_spans = torch.minimum(num_spans, torch.div(lengths, span, rounding_mode="floor")).clamp(max=max_spans)
    num_slots = lengths - num_spans * (span - 1)
    keys = _uniform(batch, max_len, device=device, generator=generator)
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


def masked_steps_in_order(mask: torch.Tensor, max_masked: int) -> torch.Tensor:
    """(B, T) mask -> (B, M) each clip's masked step indices in time order, left-aligned, ``M = min(max_masked, T)``.

    Row ``b`` holds ``mask[b].sum()`` masked steps, then unmasked ones; ``max_masked``
    must bound the masked steps of every clip.
    """
    return torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : min(max_masked, mask.shape[1])]


def sample_distractors(
    counts: torch.Tensor, max_masked: int, num_distractors: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Draw distractors for every masked step from the other masked steps of its clip.

    Args:
        counts: (B,) long, masked steps per clip, at most ``max_masked`` (M).
    Returns:
        ranks: (B, M, K') long, for the clip's ``i``-th masked step, the ranks (positions in
            :func:`masked_steps_in_order`) of its distractors, ``K' = min(num_distractors, M - 1)``.
        valid: (B, M, K') bool, False where a clip had fewer than K' other masked steps, and on
            rows ``i >= counts[b]``.

    A step with at least ``num_distractors`` other masked steps in its clip gets
    that many, drawn uniformly without replacement; otherwise every other
    masked step of the clip is used once and the remaining slots are invalid.
    """
    batch = counts.shape[0]
    width = min(num_distractors, max_masked - 1)
    if width <= 0:
        empty = counts.new_zeros(batch, max_masked, 0)
        return empty, empty.bool()
    others = (counts - 1)[:, None, None]
    keys = _uniform(batch, max_masked, max_masked - 1, device=counts.device, generator=generator)
    keys.masked_fill_(torch.arange(max_masked - 1, device=counts.device) >= others, 2.0)
    chosen = keys.topk(width, dim=2, largest=False).indices
    own_rank = torch.arange(max_masked, device=counts.device)[None, :, None]
    valid = (chosen < others) & (own_rank <= others)
    # Skip the step itself: ranks at or above its own shift up by one.
    return chosen + (chosen >= own_rank).long(), valid


def sample_cross_clip_distractors(
    counts: torch.Tensor, max_masked: int, num_distractors: int, generator: Optional[torch.Generator] = None
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw distractors for every masked step from the masked steps of the *other* clips of the batch.

    Args:
        counts: (B,) long, masked steps per clip, at most ``max_masked`` (M).
    Returns:
        clips, ranks: (B, M, num_distractors) long, the clip of each distractor and its rank among that clip's
            masked steps, drawn uniformly with replacement (as wav2vec 2.0's ``cross_sample_negatives``) from
            the masked steps outside the step's own clip.
        valid: (B, M, num_distractors) bool, False for every slot when no other clip has a masked step, and
            on rows ``i >= counts[b]``.
    """
    batch = counts.shape[0]
    ends = counts.cumsum(0)
    starts = ends - counts
    pool = (ends[-1] - counts)[:, None, None]
    draws = _uniform(batch, max_masked, num_distractors, device=counts.device, generator=generator)
    # Rows of the batch's masked steps counted clip after clip, skipping over the step's own clip.
    rows = torch.minimum((draws * pool).long(), (pool - 1).clamp(min=0))
    rows = rows + (rows >= starts[:, None, None]).long() * counts[:, None, None]
    clips = torch.searchsorted(ends, rows.flatten(), right=True).view_as(rows).clamp(max=batch - 1)
    own_rank = torch.arange(max_masked, device=counts.device)[None, :, None]
    valid = ((pool > 0) & (own_rank < counts[:, None, None])).expand_as(rows)
    return clips, (rows - starts[clips]).clamp(min=0, max=max_masked - 1), valid

"""Checks on training batches shared by the criteria: skipped-clip counts and non-finite losses.

A criterion calls :func:`add_unreadable_count` and :func:`report_nonfinite_loss`
in ``forward`` and :func:`log_unreadable_count` in ``reduce_metrics``.
"""
import logging
from typing import Dict, List

import torch
from fairseq import metrics

from ..modules.compile import under_nan_detector
from ..modules.frontend import float_waveform

logger = logging.getLogger(__name__)

UNREADABLE_KEY = "unreadable_clips"


def add_unreadable_count(logging_output: Dict, sample: Dict, task) -> None:
    """Carry the batch's count of skipped unreadable clips into the logging output.

    Only when the task opted in (``skip_unreadable_clips``): the key is then
    present on every rank, as fairseq's summed logging outputs require.
    """
    if getattr(getattr(task, "cfg", None), "skip_unreadable_clips", False):
        logging_output[UNREADABLE_KEY] = sample.get(UNREADABLE_KEY, 0)


def log_unreadable_count(logging_outputs: List[Dict]) -> None:
    """Sum the skipped clips: fairseq shows the sum per log interval and over the epoch in its end-of-epoch line."""
    if any(UNREADABLE_KEY in log for log in logging_outputs):
        metrics.log_scalar_sum(UNREADABLE_KEY, sum(log.get(UNREADABLE_KEY, 0) for log in logging_outputs), round=0)


def report_nonfinite_loss(loss: torch.Tensor, sample: Dict, model: torch.nn.Module) -> bool:
    """Log an error naming the clips of the batch if ``loss`` is NaN or Inf; return whether it was.

    Reading the loss costs a host-device sync, so on an accelerator it is read
    only in the re-run of the batch that fairseq's trainer makes under its
    NanDetector once it found non-finite gradients (at once in fp32/bf16; in
    fp16 when the dynamic loss scale reached its minimum). On CPU, where
    reading costs nothing, every batch is checked. Clips whose waveform holds
    NaN/Inf or exceeds full scale are singled out.
    """
    if loss.device.type != "cpu" and not under_nan_detector(model):
        return False
    if bool(torch.isfinite(loss).all()):
        return False
    source = float_waveform(sample["net_input"]["source"].detach())
    ids = sample["id"].tolist() if "id" in sample else list(range(source.shape[0]))
    names = sample.get("clip_names") or [f"id {i}" for i in ids]
    nonfinite = (~torch.isfinite(source)).flatten(1).any(1).tolist()
    peaks = source.abs().nan_to_num(0.0, posinf=0.0).flatten(1).amax(1).tolist()
    suspects = [f"{name} (NaN/Inf samples)" for name, bad in zip(names, nonfinite) if bad]
    suspects += [f"{name} (peak {peak:.3g})" for name, bad, peak in zip(names, nonfinite, peaks) if not bad and peak > 1.0]
    logger.error(
        f"non-finite loss {loss.detach().sum().item()} in a batch of {len(ids)} clips, dataset ids {ids}: "
        f"{', '.join(names)}" + (f"; suspects: {', '.join(suspects)}" if suspects else "")
    )
    return True

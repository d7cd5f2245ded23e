"""``logmel_tri_stage``: fairseq's ``tri_stage`` schedule for any positive ``optimization.max_update``.

fairseq's ``tri_stage`` turns ``phase_ratio`` into whole updates by rounding
down, and needs a decay of at least one update (it divides by its length):
with the fine-tuning recipe's 30/30/40% that holds from ``max_update=3`` on,
and ``max_update=1`` or ``2`` (a smoke run) failed with ``please specify steps
or phase_ratio``. This schedule takes fairseq's warm-up and hold lengths and a
decay of ``max(1, int(max_update * phase_ratio[2]))`` updates: the same
schedule as fairseq's wherever fairseq's works.
"""
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from fairseq.optim.lr_scheduler import register_lr_scheduler
from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRScheduleConfig, TriStageLRSchedule


@dataclass
class LogmelTriStageConfig(TriStageLRScheduleConfig):
    pass


def phase_steps(max_update: float, phase_ratio: Sequence[float]) -> Tuple[int, int, int]:
    """(warm-up, hold, decay) updates for fractions ``phase_ratio`` of ``max_update``: rounded down as fairseq's
    ``tri_stage`` does, and at least one update of decay. Raises ValueError, naming the setting, for a
    ``max_update`` that is not positive or ratios that are not three fractions adding up to 1."""
    if len(phase_ratio) != 3 or any(ratio < 0 for ratio in phase_ratio) or abs(sum(phase_ratio) - 1) > 1e-6:
        raise ValueError(f"lr_scheduler.phase_ratio must be three fractions (warm-up, hold, decay) adding up to 1, got {list(phase_ratio)}")
    if max_update <= 0:
        raise ValueError(
            "lr_scheduler.phase_ratio divides optimization.max_update, which is not set (0): set optimization.max_update, "
            "or give lr_scheduler.warmup_steps, hold_steps and decay_steps with lr_scheduler.phase_ratio=null"
        )
    warmup, hold, decay = (int(max_update * ratio) for ratio in phase_ratio)
    return warmup, hold, max(1, decay)


@register_lr_scheduler("logmel_tri_stage", dataclass=LogmelTriStageConfig)
class LogmelTriStageSchedule(TriStageLRSchedule):
    """fairseq's ``TriStageLRSchedule`` on the update counts of :func:`phase_steps` when ``phase_ratio`` is set, and on
    ``warmup_steps``, ``hold_steps`` and ``decay_steps`` when it is not. Raises ValueError, naming the setting, where
    fairseq's would fail on an assertion or a division by zero."""

    def __init__(self, cfg: LogmelTriStageConfig, optimizer):
        phase_ratio: Optional[Sequence[float]] = cfg.phase_ratio
        if phase_ratio is not None:
            warmup, hold, decay = phase_steps(cfg.max_update, phase_ratio)
        else:
            warmup, hold, decay = cfg.warmup_steps, cfg.hold_steps, cfg.decay_steps
            if decay < 1:
                raise ValueError(f"lr_scheduler.decay_steps must be at least 1, got {decay} (or set lr_scheduler.phase_ratio)")
        steps = LogmelTriStageConfig(
            warmup_steps=warmup, hold_steps=hold, decay_steps=decay, phase_ratio=None, init_lr_scale=cfg.init_lr_scale,
            final_lr_scale=cfg.final_lr_scale, max_update=cfg.max_update, lr=list(cfg.lr),
        )
        super().__init__(steps, optimizer)
        self.cfg = cfg

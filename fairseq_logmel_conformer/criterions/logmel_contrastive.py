"""``logmel_contrastive``: wav2vec 2.0's contrastive task on unquantised latents (paper Sec. 2.3)."""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..modules.compile import StepCompiler
from ..modules.masking import masked_steps_in_order, sample_cross_clip_distractors, sample_distractors
from .batch_checks import add_unreadable_count, log_unreadable_count, report_nonfinite_loss


@dataclass
class LogmelContrastiveConfig(FairseqDataclass):
    num_distractors: int = field(default=100, metadata={"help": "K: distractors per masked step, drawn from the other masked steps of the same clip"})
    cross_clip_distractors: int = field(
        default=0,
        metadata={
            "help": "extra distractors per masked step drawn from the masked steps of the other clips of the batch "
            "(wav2vec 2.0's cross_sample_negatives). Same-clip distractors share the clip's sound, so they reward "
            "only what changes within a clip; these make what tells clips apart worth encoding too. The paper uses 0"
        },
    )
    temperature: float = field(default=0.1, metadata={"help": "cosine similarities are divided by this before the softmax"})


# Cosine similarity at or above which a distractor counts as the positive itself: identical latents score 1 within
# about 6e-7 in fp32, and a distractor this close scores within 1e-4 of the positive at temperature 0.1.
SAME_AS_POSITIVE = 1.0 - 1e-5


def contrastive_logits(
    context: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    num_distractors: int,
    temperature: float,
    cross_clip_distractors: int = 0,
    max_masked: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, M, 1 + K' + K_x) of each clip's masked steps, and (B, M) True at the rows that are scored.

    context, targets: (B, T, C); mask: (B, T) True at masked steps. Row ``(b, i)``
    is clip ``b``'s ``i``-th masked step; column 0 is its positive. ``M`` is
    ``max_masked`` (a bound on any clip's masked steps, see
    :func:`~fairseq_logmel_conformer.modules.masking.max_masked_steps`; default T),
    so no shape depends on the mask and nothing waits on the device. Only
    masked steps that have a distractor are scored. A clip with fewer than
    K + 1 masked steps uses each of its other masked steps once (K' = min(K, M - 1);
    missing slots get -inf). The last K_x = ``cross_clip_distractors`` columns
    come from other clips. Distractors pointing the same way as the positive
    (digital silence repeats itself) get -inf too, as identical ones do in
    wav2vec 2.0: under a cosine no model could tell them apart.
    """
    batch, steps, channels = context.shape
    max_masked = steps if max_masked is None else min(max_masked, steps)
    counts = mask.sum(1)
    has_distractor = counts > 1
    if cross_clip_distractors > 0:
        has_distractor = has_distractor | (counts.sum() - counts > 0)
    # A clip whose masked steps have no distractor takes no part, not even as a source of distractors.
    counts = counts * has_distractor
    order = masked_steps_in_order(mask, max_masked)
    scored = torch.arange(max_masked, device=mask.device)[None, :] < counts[:, None]
    ranks, valid = sample_distractors(counts, max_masked, num_distractors)
    columns = torch.cat([order[:, :, None], order.gather(1, ranks.flatten(1)).view_as(ranks)], dim=2)
    # fp32 whatever the model's precision, and out of autocast, which would run the products in half precision.
    with torch.autocast(device_type=context.device.type, enabled=False):
        rows = order[:, :, None].expand(batch, max_masked, channels)
        predicted = F.normalize(context.float(), dim=-1).gather(1, rows)
        latents = F.normalize(targets.float(), dim=-1)
        # Each masked step against every step of its clip in one batched product, (B, M, T), then the 1 + K'
        # used: gathering (B, M, 1 + K', C) candidate vectors instead moves about 20x the memory at C = 256.
        similarity = torch.bmm(predicted, latents.transpose(1, 2)).gather(2, columns)
        with torch.no_grad():
            positive = latents.gather(1, rows)
            same_as_positive = torch.bmm(positive, latents.transpose(1, 2)).gather(2, columns[:, :, 1:]) >= SAME_AS_POSITIVE
        if cross_clip_distractors > 0:
            clips, cross_ranks, cross_valid = sample_cross_clip_distractors(counts, max_masked, cross_clip_distractors)
            # Flat rows: index_select's backward is one index_add, where indexing with two tensors needs index_put.
            steps_of_others = order.flatten()[clips * max_masked + cross_ranks]
            others = latents.flatten(0, 1).index_select(0, (clips * steps + steps_of_others).flatten())
            others = others.view(batch, max_masked, cross_clip_distractors, channels)
            similarity = torch.cat([similarity, torch.einsum("bmc,bmkc->bmk", predicted, others)], dim=2)
            with torch.no_grad():
                cross_same = torch.einsum("bmc,bmkc->bmk", positive, others) >= SAME_AS_POSITIVE
            same_as_positive = torch.cat([same_as_positive, cross_same], dim=2)
            valid = torch.cat([valid, cross_valid], dim=2)
    logits = similarity / temperature
    logits[:, :, 1:] = logits[:, :, 1:].masked_fill(~valid | same_as_positive, float("-inf"))
    return logits, scored


def contrastive_loss(
    context: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    num_distractors: int,
    temperature: float,
    cross_clip_distractors: int,
    max_masked: Optional[int],
    reduce: bool = True,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loss of the scored masked steps (summed, or one per step without ``reduce``), their count, and how
    many of them the positive wins (see :func:`contrastive_logits`). The criterion compiles it (when reducing)
    with the model's ``compile``."""
    logits, scored = contrastive_logits(context, targets, mask, num_distractors, temperature, cross_clip_distractors, max_masked)
    target = logits.new_zeros(logits.shape[:2], dtype=torch.long)
    losses = F.cross_entropy(logits.transpose(1, 2), target, reduction="none").masked_fill(~scored, 0.0)
    with torch.no_grad():
        # A step counts as correct only if the positive is the unique maximum, so a collapsed
        # model (all logits equal) scores 0, not 100%.
        is_max = logits.argmax(-1) == 0
        is_min = logits.argmin(-1) == 0
        correct = (is_max & ~is_min & scored).sum()
    # The count is a tensor, which fairseq's trainer accepts: counting the scored steps on the host would sync.
    return (losses.sum() if reduce else losses[scored]), scored.sum(), correct


@register_criterion("logmel_contrastive", dataclass=LogmelContrastiveConfig)
class LogmelContrastiveCriterion(FairseqCriterion):
    def __init__(self, cfg: LogmelContrastiveConfig, task):
        super().__init__(task)
        self.num_distractors = cfg.num_distractors
        self.temperature = cfg.temperature
        self.cross_clip_distractors = cfg.cross_clip_distractors

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[torch.Tensor, torch.Tensor, Dict]:
        # The model's compile setting covers the loss too (a DDP wrapper hands the attribute through).
        compiler = getattr(model, "step_compiler", None) or StepCompiler()
        if model.training:
            compiler.step_begins()
        net_output = model(**sample["net_input"])
        # Unreduced, the loss has a shape that depends on the mask: that stays eager.
        loss, sample_size, correct = (compiler.wrap(contrastive_loss, model) if reduce else contrastive_loss)(
            net_output["context"],
            net_output["targets"],
            net_output["mask"],
            self.num_distractors,
            self.temperature,
            self.cross_clip_distractors,
            net_output["max_masked_steps"],
            reduce,
        )
        sample_size = compiler.keep(sample_size)
        # Tensors, not .item(): fairseq sums them lazily, so logging adds no host-device sync per step.
        logging_output = {
            "loss": compiler.keep(loss.detach()),
            "sample_size": sample_size,
            "nsentences": sample["net_input"]["source"].shape[0],
            "ntokens": sample_size,
            "correct": compiler.keep(correct),
            "masked_steps": net_output["mask"].sum(),
        }
        add_unreadable_count(logging_output, sample, self.task)
        report_nonfinite_loss(loss, sample, model)
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict]) -> None:
        # Sums, not averages weighted by the scored count: an average meter compares its weight with 0, which for
        # a device tensor is a host-device sync. fairseq's meters convert the sums only when a log line is written.
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        for meter, key in (("_loss", "loss"), ("_scored", "sample_size"), ("_correct", "correct")):
            metrics.log_scalar_sum(meter, total(key))
        metrics.log_scalar("masked_steps", total("masked_steps"), round=1)
        log_unreadable_count(logging_outputs)

        def per_scored_step(meters, key, when_none):
            scored = float(meters["_scored"].sum)
            return float(meters[key].sum) / scored if scored > 0 else when_none

        metrics.log_derived("loss", lambda meters: round(per_scored_step(meters, "_loss", 0.0) / math.log(2), 3))
        metrics.log_derived("accuracy", lambda meters: round(per_scored_step(meters, "_correct", float("nan")), 5))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

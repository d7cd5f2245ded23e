"""``logmel_contrastive``: wav2vec 2.0's contrastive task on unquantised latents (paper Sec. 2.3)."""
import math
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from ..modules.masking import sample_cross_clip_distractors, sample_distractors
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
) -> torch.Tensor:
    """Logits (N, 1 + K' + K_x) for the N masked steps that have at least one distractor; column 0 is the positive.

    context, targets: (B, T, C); mask: (B, T) True at masked steps. A clip with
    fewer than K + 1 masked steps uses each of its other masked steps once
    (K' is the largest count in the batch; missing slots get -inf). The last
    K_x = ``cross_clip_distractors`` columns come from other clips. Distractors
    pointing the same way as the positive (digital silence repeats itself) get
    -inf too, as identical ones do in wav2vec 2.0: under a cosine no model could
    tell them apart.
    """
    counts = mask.sum(1, keepdim=True)
    has_distractor = counts > 1
    if cross_clip_distractors > 0:
        has_distractor = has_distractor | (counts.sum() - counts > 0)
    eligible = mask & has_distractor
    positives, distractor_steps, valid = sample_distractors(eligible, num_distractors)
    clip, step = positives[:, 0], positives[:, 1]
    columns = torch.cat([step[:, None], distractor_steps], dim=1)
    # fp32 whatever the model's precision, and out of autocast, which would run the products in half precision.
    with torch.autocast(device_type=context.device.type, enabled=False):
        predicted = F.normalize(context.float(), dim=-1)
        latents = F.normalize(targets.float(), dim=-1)
        # Every (step, step) similarity of each clip in one batched product, (B, T, T), then the N x (1 + K') used:
        # gathering (N, 1 + K', C) candidate vectors instead moves about 20x the memory at C = 256 and 30% masking.
        similarity = torch.bmm(predicted, latents.transpose(1, 2))[clip, step].gather(1, columns)
        with torch.no_grad():
            self_similarity = torch.bmm(latents, latents.transpose(1, 2))[clip, step].gather(1, distractor_steps)
        same_as_positive = self_similarity >= SAME_AS_POSITIVE
        if cross_clip_distractors > 0:
            rows, cross_valid = sample_cross_clip_distractors(clip, eligible.sum(1), cross_clip_distractors)
            masked_latents = latents[clip, step]
            others = masked_latents[rows]
            similarity = torch.cat([similarity, torch.einsum("nc,nkc->nk", predicted[clip, step], others)], dim=1)
            with torch.no_grad():
                cross_same = torch.einsum("nc,nkc->nk", masked_latents, others) >= SAME_AS_POSITIVE
            same_as_positive = torch.cat([same_as_positive, cross_same], dim=1)
            valid = torch.cat([valid, cross_valid], dim=1)
    logits = similarity / temperature
    logits[:, 1:] = logits[:, 1:].masked_fill(~valid | same_as_positive, float("-inf"))
    return logits


@register_criterion("logmel_contrastive", dataclass=LogmelContrastiveConfig)
class LogmelContrastiveCriterion(FairseqCriterion):
    def __init__(self, cfg: LogmelContrastiveConfig, task):
        super().__init__(task)
        self.num_distractors = cfg.num_distractors
        self.temperature = cfg.temperature
        self.cross_clip_distractors = cfg.cross_clip_distractors

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[torch.Tensor, int, Dict]:
        net_output = model(**sample["net_input"])
        logits = contrastive_logits(
            net_output["context"],
            net_output["targets"],
            net_output["mask"],
            self.num_distractors,
            self.temperature,
            self.cross_clip_distractors,
        )
        sample_size = logits.shape[0]
        target = logits.new_zeros(sample_size, dtype=torch.long)
        loss = F.cross_entropy(logits, target, reduction="sum" if reduce else "none")
        with torch.no_grad():
            # A step counts as correct only if the positive is the unique maximum, so a collapsed
            # model (all logits equal) scores 0, not 100%.
            is_max = logits.argmax(-1) == 0
            is_min = logits.argmin(-1) == 0
            correct = (is_max & ~is_min).sum()
        # Tensors, not .item(): fairseq sums them lazily, so logging adds no host-device sync per step.
        logging_output = {
            "loss": loss.detach(),
            "sample_size": sample_size,
            "nsentences": sample["net_input"]["source"].shape[0],
            "ntokens": sample_size,
            "correct": correct,
            "count": sample_size,
            "masked_steps": net_output["mask"].sum(),
        }
        add_unreadable_count(logging_output, sample, self.task)
        report_nonfinite_loss(loss, sample, model)
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict]) -> None:
        # Sums stay tensors here; fairseq's meters convert them only when a log line is written.
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = max(total("sample_size"), 1)
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("masked_steps", total("masked_steps"), round=1)
        metrics.log_scalar("_correct", total("correct"))
        metrics.log_scalar("_count", total("count"))
        log_unreadable_count(logging_outputs)
        metrics.log_derived(
            "accuracy",
            lambda meters: round(float(meters["_correct"].sum) / float(meters["_count"].sum), 5)
            if float(meters["_count"].sum) > 0
            else float("nan"),
        )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

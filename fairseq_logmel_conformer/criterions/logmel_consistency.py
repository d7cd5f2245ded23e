"""``logmel_consistency``: supervised loss plus a consistency term between two augmented views (paper Sec. 4.1)."""
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from .batch_checks import add_unreadable_count, log_unreadable_count, report_nonfinite_loss

# Probabilities are clamped away from 0 and 1 before logs: linear softmax pooling has no logits to use instead.
EPS = 1e-6


@dataclass
class LogmelConsistencyConfig(FairseqDataclass):
    consistency_weight: float = field(default=2.0, metadata={"help": "weight of the symmetric KL between the predictions for two augmentations of each clip (paper: 2; 0: one pass, no consistency term)"})


def supervised_loss(output: Dict[str, torch.Tensor], target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-clip loss (B,): BCE averaged over classes (multi-label) or cross-entropy (single-label); target (B, C) 0/1."""
    if not multilabel:
        return F.cross_entropy(output["logits"], target.argmax(-1), reduction="none")
    if output["logits"] is not None:
        return F.binary_cross_entropy_with_logits(output["logits"], target, reduction="none").mean(-1)
    return F.binary_cross_entropy(output["probs"].clamp(EPS, 1 - EPS), target, reduction="none").mean(-1)


def symmetric_kl(probs_a: torch.Tensor, probs_b: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-clip KL(a||b) + KL(b||a) (B,) of (B, C) probabilities: per-class Bernoulli averaged over
    classes (multi-label), or categorical (single-label)."""
    p, q = probs_a.float().clamp(EPS, 1 - EPS), probs_b.float().clamp(EPS, 1 - EPS)
    if multilabel:
        return ((p - q) * (p.log() - q.log() - (1 - p).log() + (1 - q).log())).mean(-1)
    return ((p - q) * (p.log() - q.log())).sum(-1)


@register_criterion("logmel_consistency", dataclass=LogmelConsistencyConfig)
class LogmelConsistencyCriterion(FairseqCriterion):
    """Loss = mean supervised loss of the two views + weight * symmetric KL between them, summed over clips.

    In training with a positive weight the model runs twice on the batch: its
    augmentations (jitter, time mask, mixup) and dropout draw differently each
    time. In evaluation it runs once, and the logging output carries the clip
    probabilities (``_scores``) and targets (``_targets``) for the task's metrics.
    """

    def __init__(self, cfg: LogmelConsistencyConfig, task):
        super().__init__(task)
        self.consistency_weight = cfg.consistency_weight
        self.multilabel = task.multilabel

    def forward(self, model, sample: Dict, reduce: bool = True) -> Tuple[torch.Tensor, int, Dict]:
        target = sample["target"]
        compiler = getattr(model, "step_compiler", None)
        if compiler is not None and model.training:
            # Under CUDA graphs: both passes below belong to one step (each replays the compiled encoder).
            compiler.step_begins()
        output = model(**sample["net_input"])
        loss = supervised_loss(output, target, self.multilabel)
        consistency = torch.zeros_like(loss)
        if model.training and self.consistency_weight > 0:
            second = model(**sample["net_input"])
            loss = 0.5 * (loss + supervised_loss(second, target, self.multilabel))
            consistency = symmetric_kl(output["probs"], second["probs"], self.multilabel)
        total = loss + self.consistency_weight * consistency
        if reduce:
            total = total.sum()
        batch = target.shape[0]
        logging_output = {
            "loss": total.detach().sum(),
            "supervised_loss": loss.detach().sum(),
            "consistency": consistency.detach().sum(),
            "sample_size": batch,
            "nsentences": batch,
            "ntokens": batch,
        }
        add_unreadable_count(logging_output, sample, self.task)
        report_nonfinite_loss(total, sample, model)
        if not model.training:
            logging_output["_scores"] = output["probs"].detach()
            logging_output["_targets"] = target
        return total, batch, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict]) -> None:
        sample_size = max(sum(log.get("sample_size", 0) for log in logging_outputs), 1)
        for key in ("loss", "supervised_loss", "consistency"):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / sample_size, sample_size, round=4)
        log_unreadable_count(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True

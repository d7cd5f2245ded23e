"""``logmel_adamw``: fairseq's Adam update (decoupled weight decay) as torch's fused AdamW.

fairseq's ``adam`` loops over parameters in Python unless apex or fairseq's
own CUDA extension is installed. That loop launches about ten kernels per
parameter, and a host-bound GPU step waits for every launch. torch's fused
AdamW updates every parameter in a few kernels, on the GPU and on the CPU
(measurements: experiments/train_throughput).

Gradient clipping likewise takes torch's multi-tensor norm instead of
fairseq's one norm kernel per parameter (367 of them in cf_L).

Half precision: with ``common.bf16`` alone, fairseq's ``FP16Optimizer`` keeps
one fp32 master copy per parameter (one flat tensor only under
``common.fp16``) and copies gradients in, weights out and zeros gradients one
parameter at a time: three kernels per parameter per update, 1,101 for cf_L.
Adding ``common.memory_efficient_bf16=true`` (or ``memory_efficient_fp16``)
hands this optimizer the half-precision weights themselves; it keeps the same
fp32 master weights and gradients (the same memory, and the same updates to
the bit where every parameter has a gradient) and moves them in one
multi-tensor copy each way. Unlike fairseq's ``adam`` under those flags, it
saves no memory; unlike fairseq's ``FP16Optimizer``, it saves the master
weights with its state, so that a resumed run continues from them exactly.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

HALF_DTYPES = (torch.float16, torch.bfloat16)
# Where the optimizer state keeps the fp32 master weights of half-precision parameters.
MASTER_WEIGHTS_KEY = "fp32_master_weights"


@dataclass
class LogmelAdamWConfig(FairseqDataclass):
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.98], metadata={"help": "Adam's (beta1, beta2)"})
    adam_eps: float = field(default=1e-6, metadata={"help": "Adam's epsilon, added to the bias-corrected root of the second moment"})
    weight_decay: float = field(default=0.01, metadata={"help": "decoupled weight decay (AdamW), times the learning rate"})
    lr: List[float] = II("optimization.lr")


@register_optimizer("logmel_adamw", dataclass=LogmelAdamWConfig)
class LogmelAdamW(FairseqOptimizer):
    def __init__(self, cfg: LogmelAdamWConfig, params):
        super().__init__(cfg)
        if len(cfg.adam_betas) != 2:
            raise ValueError(f"optimizer.adam_betas needs two values, got {list(cfg.adam_betas)}")
        params = list(params)
        # fairseq's memory-efficient half-precision wrapper hands over the model's own bf16/fp16 weights.
        self.half_params: List[torch.Tensor] = params if any(p.dtype in HALF_DTYPES for p in params) else []
        self.master_params: List[torch.Tensor] = [fp32_master(p) for p in self.half_params]
        self.master_grads_current = False
        self._optimizer = torch.optim.AdamW(self.master_params or params, fused=True, **self.optimizer_config)

    @property
    def optimizer_config(self):
        """The settings that override those in a checkpoint's optimizer state when a run resumes."""
        return {
            "lr": self.cfg.lr[0],
            "betas": tuple(self.cfg.adam_betas),
            "eps": self.cfg.adam_eps,
            "weight_decay": self.cfg.weight_decay,
        }

    def state_dict(self) -> Dict:
        state = super().state_dict()
        if self.half_params:
            # fairseq saves the model's half-precision weights: a run resumed from them alone would start from
            # the rounding of its fp32 master weights, not from those weights.
            state[MASTER_WEIGHTS_KEY] = [master.detach() for master in self.master_params]
        return state

    def load_state_dict(self, state_dict: Dict, optimizer_overrides: Optional[Dict] = None) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop(MASTER_WEIGHTS_KEY, None)
        super().load_state_dict(state_dict, optimizer_overrides)
        if masters is not None and self.half_params:
            if [m.shape for m in masters] != [m.shape for m in self.master_params]:
                raise ValueError(
                    f"the checkpoint's {len(masters)} fp32 master weights do not match this model's {len(self.master_params)} parameters"
                )
            with torch.no_grad():
                torch._foreach_copy_(self.master_params, masters)

    def clip_grad_norm(self, max_norm: float, aggregate_norm_fn: Optional[Callable] = None) -> torch.Tensor:
        """fairseq's clipping: the gradients' total 2-norm, and if ``max_norm`` > 0 their scaling to at most it."""
        self.copy_grads_to_masters()
        params = list(self.params)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            # On the parameters' device, as fairseq's: the trainer all-reduces the norm across workers.
            return params[0].new_tensor(0.0) if params else torch.tensor(0.0)
        total_norm = torch.nn.utils.get_total_norm(grads)
        if aggregate_norm_fn is not None:
            total_norm = aggregate_norm_fn(total_norm)
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total_norm)
        return total_norm

    def multiply_grads(self, c) -> None:
        self.copy_grads_to_masters()
        super().multiply_grads(c)

    def step(self, closure=None, scale: float = 1.0, groups=None) -> None:
        self.copy_grads_to_masters()
        super().step(closure, scale, groups)
        if self.half_params:
            with torch.no_grad():
                torch._foreach_copy_(self.half_params, self.master_params)

    def zero_grad(self) -> None:
        if not self.half_params:
            super().zero_grad()
            return
        for param in self.half_params:
            param.grad = None
        # The master gradients are overwritten, not accumulated, by the next copy: no need to zero them.
        self.master_grads_current = False

    def copy_grads_to_masters(self) -> None:
        """Once per update, the half-precision gradients into the fp32 master gradients.

        A parameter without a gradient (frozen, or unused by the batch) leaves
        its master without one, so that AdamW skips it as in fp32 training;
        fairseq's ``FP16Optimizer`` would step it on a zero gradient instead,
        decaying it.
        """
        if not self.half_params or self.master_grads_current:
            return
        targets, sources = [], []
        for master, param in zip(self.master_params, self.half_params):
            if param.grad is None:
                master.grad = None
                continue
            if master.grad is None:
                master.grad = torch.empty_like(master)
            targets.append(master.grad)
            sources.append(param.grad)
        if targets:
            torch._foreach_copy_(targets, sources)
        self.master_grads_current = True

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True

    @property
    def supports_flat_params(self) -> bool:
        # fairseq's fp16 path hands over all fp32 master weights as one flat tensor.
        return True


def fp32_master(param: torch.Tensor) -> torch.nn.Parameter:
    """An fp32 copy of ``param`` with the same sizes and strides, which torch's fused multi-tensor copy needs."""
    return torch.nn.Parameter(torch.empty_like(param, dtype=torch.float32).copy_(param.detach()))

"""Compiled training steps: ``torch.compile`` of the parts of a step that pay, switched on by ``model.compile``.

What is compiled, in training mode only (evaluation, inference and export stay eager):

- pre-training: :meth:`~..models.logmel_conformer.LogmelConformerModel.masked_pass` (feature encoder,
  span masking, conformer) and the contrastive loss (:func:`~..criterions.logmel_contrastive.contrastive_loss`),
  forward and backward;
- fine-tuning: the encoder's ``encode_logmel`` (feature encoder and conformer), in both passes of the
  consistency loss.

The log-mel frontend (an STFT, whose complex intermediates inductor does not generate code for), the
fine-tuning augmentations and the optimizer stay eager. Nothing in a compiled region reads a value on the
host, so nothing there waits on the device.

Shapes. Graphs are compiled for static time lengths with the batch dimension dynamic
(``torch._dynamo.maybe_mark_dynamic``), so each compiled function holds one graph per distinct padded
length of the batches it sees, times two if some batches carry a padding mask and others none, times two
if a batch of a single clip occurs (dynamo specialises a dimension of size 1). A corpus of clips no shorter
than ``task.max_sample_size`` has a single length; one of mixed lengths needs ``task.num_batch_buckets``
(padding each batch up to one of that many lengths), or every distinct batch length compiles its own
graph, until dynamo's recompile limit sends further lengths to eager. :data:`RECOMPILE_LIMIT` is the limit
this module raises dynamo's to.

Modes: inductor's ``default``, ``reduce-overhead`` (CUDA graphs: the host launches each compiled region
as one graph, for steps where the host sets the pace; one recording per distinct shape, batch size
included, so it wants fixed batches: ``dataset.batch_size`` and clips cropped to one length),
``max-autotune-no-cudagraphs`` and ``max-autotune`` (benchmarks the GEMM and convolution choices while
compiling, which takes minutes), and ``aot_eager``: the same graphs run by eager kernels, no code
generated, for checking graph breaks, recompiles and numerics quickly.
"""
import logging
from typing import Callable, Dict, Optional

import torch
from fairseq.nan_detector import NanDetector

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune", "aot_eager")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
# Graphs one compiled function may hold before dynamo runs new shapes eagerly (its own default is 8): enough
# for 16 batch lengths, with and without a padding mask, and the single-clip batches of each.
RECOMPILE_LIMIT = 64
# Whether compiled functions take the batch dimension as dynamic (benchmarks compare it with a static one).
DYNAMIC_BATCH = True


def under_nan_detector(module: torch.nn.Module) -> bool:
    """Whether fairseq's ``NanDetector`` hooks ``module`` (or the module a DDP wrapper holds): it re-runs a
    batch that gave non-finite gradients with forward hooks on every module, which a compiled graph would not run."""
    modules = [module, getattr(module, "module", None)]
    return any(
        isinstance(getattr(hook, "__self__", None), NanDetector)
        for candidate in modules
        if candidate is not None
        for hook in candidate._forward_hooks.values()
    )


class StepCompiler:
    """The compiled versions of a model's training-step functions, made on first use.

    ``mode`` is one of :data:`COMPILE_MODES`, or None for eager. :meth:`wrap` hands back the
    function itself (eager) or its compiled version, whose tensor arguments get a dynamic batch
    dimension (dimension 0) on each call.
    """

    def __init__(self, mode: Optional[str] = None):
        if mode is not None and mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {COMPILE_MODES}, got {mode!r}")
        self.mode = mode
        self._compiled: Dict[Callable, Callable] = {}

    def __getstate__(self) -> Dict:
        # Compiled functions do not pickle; a copy compiles its own on first use.
        return {"mode": self.mode, "_compiled": {}}

    @classmethod
    def from_config(cls, cfg) -> "StepCompiler":
        """From a config's ``compile`` (bool) and ``compile_mode`` fields."""
        return cls(str(cfg.compile_mode) if getattr(cfg, "compile", False) else None)

    @property
    def enabled(self) -> bool:
        return self.mode is not None

    @property
    def uses_cuda_graphs(self) -> bool:
        return self.mode in CUDA_GRAPH_MODES

    def wrap(self, fn: Callable, module: torch.nn.Module) -> Callable:
        """``fn``, compiled when this compiler is on and ``module`` is training outside fairseq's NanDetector."""
        if not self.enabled or not module.training or under_nan_detector(module) or torch.compiler.is_compiling():
            return fn
        compiled = self._compiled.get(fn)
        if compiled is None:
            compiled = self._compiled[fn] = self._compile(fn)
        return compiled

    def _compile(self, fn: Callable) -> Callable:
        config = torch._dynamo.config
        if hasattr(config, "recompile_limit"):
            config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
        else:  # torch before 2.6
            config.cache_size_limit = max(config.cache_size_limit, RECOMPILE_LIMIT)
        if self.mode == "aot_eager":
            compiled = torch.compile(fn, backend="aot_eager", dynamic=False)
        else:
            compiled = torch.compile(fn, mode=self.mode, dynamic=False)

        name = getattr(fn, "__qualname__", repr(fn))
        stats = torch._dynamo.utils.counters["stats"]

        def call(*args, **kwargs):
            tensors = [value for value in list(args) + list(kwargs.values()) if isinstance(value, torch.Tensor)]
            for tensor in tensors:
                if DYNAMIC_BATCH and tensor.dim() > 0:
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
            before = stats["unique_graphs"]
            result = compiled(*args, **kwargs)
            if stats["unique_graphs"] != before:
                shapes = ", ".join(str(tuple(tensor.shape)) for tensor in tensors)
                logger.info(f"compiled {name} for inputs {shapes} ({stats['unique_graphs']} graphs in this process)")
            return result

        return call

    def step_begins(self) -> None:
        """Tell CUDA graphs a new training step begins (the criterion calls this once per step)."""
        if self.uses_cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()

    def keep(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor that outlives the step (a logged value): a copy under CUDA graphs, whose next replay
        overwrites their outputs; the tensor itself otherwise."""
        return tensor.clone() if self.uses_cuda_graphs else tensor

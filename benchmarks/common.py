"""Shared helpers of the benchmarks: machine description, JSON output, timing, fairseq configs, training steps.

Every benchmark builds its models the way ``fairseq-hydra-train`` does (Hydra
composes the same YAML files, then fairseq's ``add_defaults``), so the numbers
describe the configurations users train. Configurations that need their own
peak memory run in a fresh worker process each (:class:`Worker`): CPU peak
memory is the process's ``ru_maxrss`` (torch allocates outside Python's heap,
so ``tracemalloc`` sees none of it), CUDA peak memory is
``torch.cuda.max_memory_allocated``.
"""
import ast
import ctypes
import datetime
import gc
import json
import logging
import multiprocessing
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

# Imported before fairseq so that it can undo the DEBUG root logging that importing fairseq's tasks switches on.
import fairseq_logmel_conformer  # noqa: F401  (also registers the plugin's task, model and criterion)
import fairseq
import numpy as np
import torch
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from fairseq.utils import move_to_cuda
from omegaconf import DictConfig, OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from fairseq_logmel_conformer.data.manifest import write_manifest
from fairseq_logmel_conformer.data.synthetic import write_dataset

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each benchmark serves one study; its results go to experiments/<study>/results/ unless told otherwise.
STUDIES = {
    "bench_train_throughput": "train_throughput",
    "bench_clip_length": "clip_length",
    "bench_input_pipeline": "input_pipeline",
    "bench_inference": "inference",
    "bench_long_audio_memory": "long_audio_memory",
    "esc50_pretrain_vs_scratch": "esc50_pretrain_vs_scratch",
    "esc50_linear_probe": "esc50_linear_probe",
}
FAIRSEQ_CONFIG_DIR = os.path.join(os.path.dirname(fairseq.__file__), "config")
WAV2VEC_CONFIG_DIR = os.path.join(os.path.dirname(fairseq.__file__), "examples", "wav2vec", "config", "pretraining")
SAMPLE_RATE = 16000
PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ModelSpec:
    """A pre-training configuration: the Hydra primary config and the folder it is composed from."""

    config_name: str
    config_dir: str
    # Overrides the configuration always needs (a fine-tuning run from scratch names its encoder).
    overrides: Sequence[str] = ()


# Our configs are found through the plugin's Hydra search path, as with fairseq-hydra-train.
MODELS: Dict[str, ModelSpec] = {
    "tiny": ModelSpec("pretrain_tiny", FAIRSEQ_CONFIG_DIR),
    "cfS": ModelSpec("pretrain_cfS", FAIRSEQ_CONFIG_DIR),
    "cfL": ModelSpec("pretrain_cfL", FAIRSEQ_CONFIG_DIR),
    # Fine-tuning (finetune_esc50's recipe: consistency loss, two passes) of a cf_S encoder from scratch.
    "cfS_ft": ModelSpec("finetune_esc50", FAIRSEQ_CONFIG_DIR, ("model.pretrained_path=null", "+encoder=cfS")),
    "w2v2_base": ModelSpec("wav2vec2_base_librispeech", WAV2VEC_CONFIG_DIR),
    "w2v2_conformer": ModelSpec("wav2vec2_conformer_base_librispeech", WAV2VEC_CONFIG_DIR),
}


def patch_fairseq_conformer_encoder() -> None:
    """Let fairseq 0.12's wav2vec 2.0 conformer build and run (facebookresearch/fairseq#5386, fixed upstream by #5176).

    ``TransformerEncoder`` passes ``layer_idx`` to ``build_encoder_layer`` and
    ``corpus_key`` to ``extract_features``; ``ConformerEncoder`` overrides both
    without those arguments, so ``layer_type: conformer`` fails in this release.
    """
    from fairseq.models.wav2vec.wav2vec2 import ConformerEncoder

    if getattr(ConformerEncoder, "_benchmark_patched", False):
        return
    build, extract = ConformerEncoder.build_encoder_layer, ConformerEncoder.extract_features

    def build_encoder_layer(self, args, **kwargs):
        return build(self, args)

    def extract_features(self, x, padding_mask=None, tgt_layer=None, **kwargs):
        return extract(self, x, padding_mask, tgt_layer)

    ConformerEncoder.build_encoder_layer = build_encoder_layer
    ConformerEncoder.extract_features = extract_features
    ConformerEncoder._benchmark_patched = True


patch_fairseq_conformer_encoder()


# ----------------------------------------------------------------------------- machine and output


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: str) -> Dict:
    """CPU model, cores, threads, memory, library versions and (for cuda) the GPU."""
    import torchaudio

    description = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_1min_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "fairseq": fairseq.__version__,
        "device": device,
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        description.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return description


def git_commit() -> Optional[str]:
    """The repository's commit, with ``+changes`` if tracked files differ from it; outside a git checkout (a copy of
    the working tree on another machine) ``$LOGMEL_GIT_COMMIT``, or None."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True).stdout.strip()

    try:
        changed = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("LOGMEL_GIT_COMMIT")


def provenance(benchmark: str, device: str, argv: Optional[Sequence[str]] = None, command: Optional[str] = None) -> Dict:
    """What ran and where: the command line (``python -m benchmarks.<benchmark>`` with ``argv``, default the process's;
    or ``command``, for a program that is not a module of ``benchmarks``), the commit, the date and the machine."""
    if command is None:
        arguments = sys.argv[1:] if argv is None else [str(argument) for argument in argv]
        command = " ".join([os.path.basename(sys.executable), "-m", f"benchmarks.{benchmark}", *arguments])
    return {
        "benchmark": benchmark,
        "command": command,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(device),
    }


def write_json(
    path: str, benchmark: str, settings: Dict, results, device: str, notes: Sequence[str] = (), argv: Optional[Sequence[str]] = None,
    command: Optional[str] = None,
) -> None:
    """Write one benchmark run: what ran (command, commit, settings; see :func:`provenance`), where (machine), and its results."""
    payload = {
        **provenance(benchmark, device, argv, command),
        "settings": settings,
        "notes": list(notes),
        "results": results,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


def results_dir(benchmark: str) -> str:
    """``experiments/<study>/results``: where ``benchmark`` writes unless told otherwise."""
    return os.path.join(REPOSITORY, "experiments", STUDIES[benchmark], "results")


def default_output(benchmark: str, device: str, precision: str = "fp32") -> str:
    """``experiments/<study>/results/<device>[_<precision>].json``."""
    return os.path.join(results_dir(benchmark), device + ("" if precision == "fp32" else f"_{precision}") + ".json")


def start_benchmark(device: str, threads: Optional[int] = None) -> None:
    """The prologue of every benchmark's ``main``: check the device, pin torch's threads, log INFO lines."""
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    if threads:
        torch.set_num_threads(threads)
    # force: importing fairseq already gave the root logger a handler, which makes a plain basicConfig a no-op.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)


# ----------------------------------------------------------------------------- timing and memory


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    """Wall seconds of one call of ``fn``, with the device queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def summarize(seconds: Sequence[float]) -> Dict:
    """Median, min, max and count of a list of timings."""
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
    }


def peak_memory_mib(device: str) -> float:
    """Peak memory of this process so far: CUDA allocated bytes, or the CPU resident set (ru_maxrss)."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- data and configs


def write_corpus(folder: str, num_clips: int, seconds: float, source_rate: int = SAMPLE_RATE, extension: str = "wav") -> str:
    """Generated clips of ``seconds`` each and a ``train.tsv`` manifest (sizes at 16 kHz); returns ``folder``."""
    clips = write_dataset(folder, num_clips, sample_rate=source_rate, seconds=(seconds, seconds), extension=extension)
    entries = [(c["path"], int(np.ceil(c["num_samples"] * SAMPLE_RATE / source_rate))) for c in clips]
    write_manifest(os.path.join(folder, "train.tsv"), os.path.abspath(folder), entries)
    # Labels, for the fine-tuning configuration (pre-training reads only the manifest).
    with open(os.path.join(folder, "train.labels"), "w") as labels:
        labels.writelines(clip["label"] + "\n" for clip in clips)
    with open(os.path.join(folder, "labels.txt"), "w") as vocabulary:
        vocabulary.writelines(name + "\n" for name in sorted({clip["label"] for clip in clips}))
    return folder


def precision_overrides(precision: str) -> List[str]:
    """fairseq's own switches: fp16 halves the model with dynamic loss scaling, bf16 casts it to bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return [f"common.fp16={precision == 'fp16'}", f"common.bf16={precision == 'bf16'}"]


def load_config(model: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose a pre-training config as ``fairseq-hydra-train --config-name`` would, with ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {sorted(MODELS)}")
    spec = MODELS[model]
    hydra_init(spec.config_name)
    GlobalHydra.instance().clear()
    # fairseq-hydra-train runs Hydra with 1.1 semantics, which the wav2vec YAMLs' '@package _group_' headers need.
    with warnings.catch_warnings(), initialize_config_dir(config_dir=spec.config_dir, version_base="1.1"):
        warnings.simplefilter("ignore", UserWarning)
        cfg = compose(config_name=spec.config_name, overrides=list(spec.overrides) + list(overrides))
    GlobalHydra.instance().clear()
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def training_overrides(data: str, device: str, precision: str, clip_samples: int, save_dir: str) -> List[str]:
    """Overrides that make every model train on the same single-process batches of ``clip_samples`` clips."""
    return [
        f"task.data={data}",
        f"task.max_sample_size={clip_samples}",
        f"task.min_sample_size={clip_samples}",
        f"common.cpu={device == 'cpu'}",
        "distributed_training.distributed_world_size=1",
        "dataset.num_workers=0",
        f"checkpoint.save_dir={save_dir}",
    ] + precision_overrides(precision)


def adam_betas(cfg: DictConfig):
    """Adam's betas: a list in our configs, a string such as '(0.9,0.98)' in fairseq's own (wav2vec 2.0)."""
    betas = cfg.optimizer.adam_betas
    return ast.literal_eval(betas) if isinstance(betas, str) else tuple(betas)


# ----------------------------------------------------------------------------- training steps


class BareTrainStep:
    """The trainer-overhead reference: forward, backward, clip, AdamW step in plain PyTorch.

    The same criterion and model as fairseq's Trainer, the gradient of
    ``loss / sample_size`` (fairseq sums the loss and divides the gradients by
    the sample size), the same clip norm and Adam settings (our configs'
    logmel_adamw is torch's AdamW too). Mixed precision is autocast (plus a
    GradScaler for fp16) over fp32 weights; fairseq's Trainer instead halves
    the weights and keeps fp32 master copies.
    """

    def __init__(self, model: torch.nn.Module, criterion: torch.nn.Module, cfg: DictConfig, device: str, precision: str, lr: Optional[float] = None):
        self.model = model.to(device).train()
        self.criterion = criterion.to(device).train()
        self.device = device
        self.dtype = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.clip_norm = cfg.optimization.clip_norm
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=cfg.optimization.lr[0] if lr is None else lr,
            betas=adam_betas(cfg),
            eps=cfg.optimizer.adam_eps,
            weight_decay=cfg.optimizer.weight_decay,
            fused=device == "cuda",
        )
        self.scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def __call__(self, sample: Dict) -> torch.Tensor:
        """One update on ``sample`` (a collated batch, on the CPU); returns the summed loss."""
        if self.device == "cuda":
            sample = move_to_cuda(sample)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            loss, sample_size, _ = self.criterion(self.model, sample)
        self.scaler.scale(loss / sample_size).backward()
        if self.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()


def apply_bench_overrides(overrides: Sequence[str]) -> List[str]:
    """Carry out the benchmark's own settings, switches of this worker process, and return the other overrides (Hydra's):

    - ``bench.depthwise=shifted_sums|conv``: how compiled graphs compute the depthwise convolution;
    - ``bench.dynamic_batch=true|false``: whether compiled graphs take the batch size as dynamic (false: one graph
      per batch size).
    """
    from fairseq_logmel_conformer.modules import compile as compile_module, conformer

    rest = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key == "bench.depthwise" and value in ("shifted_sums", "conv"):
            conformer.COMPILED_DEPTHWISE = value
        elif key == "bench.dynamic_batch" and value in ("true", "false"):
            compile_module.DYNAMIC_BATCH = value == "true"
        elif key.startswith("bench."):
            raise ValueError(f"unknown benchmark setting {override!r}: bench.depthwise=shifted_sums|conv, bench.dynamic_batch=true|false")
        else:
            rest.append(override)
    return rest


class TrainingRunner:
    """One model configuration ready to take training steps on one fixed batch.

    ``path`` is ``trainer`` (fairseq's ``Trainer.train_step``, what
    ``fairseq-hydra-train`` runs each update) or ``bare`` (:class:`BareTrainStep`).
    The batch is the first ``num_clips`` clips of ``data``'s train manifest,
    read and collated by the task's own dataset. ``overrides`` (Hydra's
    ``key=value``) come after the benchmark's own.
    """

    def __init__(self, model: str, path: str, device: str, precision: str, data: str, num_clips: int, clip_samples: int,
                 lr: Optional[float] = None, overrides: Sequence[str] = ()):
        from fairseq import tasks, utils
        from fairseq.trainer import Trainer

        if path not in ("trainer", "bare"):
            raise ValueError(f"path must be 'trainer' or 'bare', got {path!r}")
        self.model_name, self.path, self.device, self.precision = model, path, device, precision
        overrides = apply_bench_overrides(overrides)
        checkpoints = os.path.join(data, "checkpoints")
        self.cfg = load_config(model, training_overrides(data, device, precision, clip_samples, checkpoints) + list(overrides))
        self.warmup_step_times_s: List[float] = []
        # The same seeding as fairseq_cli.train, so that both paths start from the same weights.
        np.random.seed(self.cfg.common.seed)
        utils.set_torch_seed(self.cfg.common.seed)
        self.task = tasks.setup_task(self.cfg.task)
        self.task.load_dataset("train")
        dataset = self.task.dataset("train")
        if len(dataset) < num_clips:
            raise ValueError(f"asked for {num_clips} clips, the manifest in {data} has {len(dataset)} usable clips")
        self.sample = dataset.collater([dataset[i] for i in range(num_clips)])
        if device == "cuda":
            # fairseq's EpochBatchIterator loads with pin_memory=True; an unpinned batch would add a synchronous,
            # pageable host-to-device copy that training does not pay.
            from fairseq.utils import apply_to_sample

            self.sample = apply_to_sample(lambda tensor: tensor.pin_memory(), self.sample)
        self.batch_seconds = float(self.sample["net_input"]["source"].numel()) / SAMPLE_RATE
        model_module = self.task.build_model(self.cfg.model)
        criterion = self.task.build_criterion(self.cfg.criterion)
        self.num_parameters = sum(p.numel() for p in model_module.parameters())
        if path == "trainer":
            self.trainer = Trainer(self.cfg, self.task, model_module, criterion)
            # What fairseq_cli.train does before the first update (sets the warm-up learning rate).
            self.trainer.begin_epoch(1)
            self.model, self.criterion = self.trainer.model, self.trainer.criterion
        else:
            self.bare = BareTrainStep(model_module, criterion, self.cfg, device, precision, lr)
            self.model, self.criterion = self.bare.model, self.bare.criterion

    def step(self) -> None:
        if self.path == "trainer":
            from fairseq import metrics

            # fairseq_cli.train wraps each update in this aggregator and logs it every log_interval updates.
            with metrics.aggregate("train_inner"):
                if self.trainer.train_step([self.sample]) is None:
                    raise RuntimeError(f"{self.model_name}: fairseq skipped the update (out of memory?)")
        else:
            self.bare(self.sample)

    def time_steps(self, warmup: int, steps: int) -> List[float]:
        """``warmup`` untimed steps, then the seconds of each of ``steps`` steps. The warm-up steps' seconds are kept
        (``warmup_step_times_s``): the first of a compiled configuration includes its compilation."""
        self.warmup_step_times_s.extend(time_call(self.step, self.device) for _ in range(warmup))
        return [time_call(self.step, self.device) for _ in range(steps)]

    def attention_shape(self) -> Dict[str, int]:
        """Sequence length, width and depth of the attention stack for this batch (for the FLOP estimate)."""
        from fairseq_logmel_conformer.models import LogmelConformerClassifier, LogmelConformerModel, encoder_of

        model = self.trainer.get_model() if self.path == "trainer" else self.model
        samples = self.sample["net_input"]["source"].shape[1]
        if isinstance(model, (LogmelConformerModel, LogmelConformerClassifier)):
            encoder = encoder_of(model)
            return {"steps": encoder.geometry.num_steps(samples), "dim": encoder.cfg.encoder_dim, "layers": encoder.cfg.encoder_layers}
        steps = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
        return {"steps": steps, "dim": self.cfg.model.encoder_embed_dim, "layers": self.cfg.model.encoder_layers}

    def diagnostics(self, profile: bool = True, profile_top: int = 15) -> Dict:
        """FLOPs of one step; with ``profile``, also the attention kernels it runs, the kernels its time goes to,
        the optimizer step alone, and (on CUDA) its host-device syncs."""
        shape = self.attention_shape()
        batch = self.sample["net_input"]["source"].shape[0]
        # QK^T and attention-times-V: 2 * T^2 * d multiply-adds each, forward; backward costs twice that.
        attention = 3 * 4 * batch * shape["steps"] ** 2 * shape["dim"] * shape["layers"]
        report = {"attention_shape": shape, "attention_flops_estimate": attention}
        report["warmup_step_times_s"] = list(self.warmup_step_times_s)
        report["graphs_compiled"] = int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
        # The counting modes run the step eagerly: under a dispatch mode dynamo would skip the compiled frames (and
        # keep skipping them afterwards). FLOPs are the same; the dispatched operations are the eager step's.
        with torch.compiler.set_stance("force_eager"):
            report.update(count_step_flops(self.step))
            report["dispatched_ops_per_step"] = count_dispatched_ops(self.step)
        report["attention_flop_share"] = attention / report["flops_per_step"] if report["flops_per_step"] else None
        if not profile:
            return report
        report.update(profile_step(self.step, self.device, top=profile_top))
        optimizer = self.trainer.optimizer if self.path == "trainer" else self.bare.optimizer
        # The update alone, on the gradients the last step left: the config's optimizer (with fairseq's fp16/bf16
        # master-weight copies on the trainer path) against torch's AdamW.
        report["optimizer_step"] = summarize([time_call(optimizer.step, self.device) for _ in range(3)])
        if self.device == "cuda":
            report["host_syncs"] = host_syncs(self.step)
        return report


class DispatchedOps(TorchDispatchMode):
    """Counts the operations dispatched inside it that are not views: each launches at least one kernel on a GPU.

    Below about 128 clips a GPU step waits on the host issuing these, so their
    number is what bounds it, on any device.
    """

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def count_dispatched_ops(step: Callable[[], None]) -> int:
    with DispatchedOps() as ops:
        step()
    return ops.count


def count_step_flops(step: Callable[[], None]) -> Dict:
    """FLOPs of one call of ``step`` from ``torch.utils.flop_counter.FlopCounterMode``.

    torch 2.9's counter charges ``convolution_backward`` as a dense
    convolution whatever its ``groups`` (a depthwise kernel of 256 channels
    gets 256x its cost); the backward is counted here as twice the forward
    instead (gradients for input and weight).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    raw = sum(by_op.values())
    corrected = raw - by_op.get("aten.convolution_backward", 0) + 2 * by_op.get("aten.convolution", 0)
    return {"flops_per_step": corrected, "flops_by_op": by_op}


ATTENTION_OP = re.compile(r"scaled_dot_product|flash|fmha|efficient_attention|attention_math|cudnn.*attention", re.I)


def profile_step(step: Callable[[], None], device: str, top: int = 15) -> Dict:
    """One profiled call of ``step``: the attention operators and kernels it runs, and where its time goes.

    ``attention_ops``: names and call counts. ``aten::_scaled_dot_product_flash_attention`` /
    ``_efficient_attention`` / ``_cudnn_attention`` are the fused CUDA paths,
    ``..._flash_attention_for_cpu`` the fused CPU path and ``_scaled_dot_product_attention_math`` the
    unfused fallback. ``time_by_kernel``: the ``top`` names that take most of the step with their calls,
    milliseconds and share of the total (see :func:`time_by_name`).
    """
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        synchronize(device)
    attention: Dict[str, int] = {}
    for event in prof.events():
        if ATTENTION_OP.search(event.name):
            attention[event.name] = attention.get(event.name, 0) + 1
    report = {"attention_ops": attention, "time_by_kernel": time_by_name(prof.events(), device, top)}
    if device == "cuda":
        # What the host launched: GPU kernels, copies and fills (the count that bounds a host-bound step).
        from torch.autograd import DeviceType

        report["device_operations_per_step"] = sum(
            1 for event in prof.events() if event.device_type == DeviceType.CUDA and not event.is_user_annotation
        )
    return report


def time_by_name(events, device: str, top: int) -> Dict:
    """Profiler events summed by name: GPU kernels and copies by device time on cuda, operators by self CPU time
    on cpu; -> {"total_ms", "top": the ``top`` names with calls, ms and share of the total}.

    On cuda, ``record_function`` ranges (fairseq's "forward", "clip-grads", "optimizer") are mirrored onto the GPU
    timeline as user annotations spanning the kernels they launched: they are skipped, or every kernel would be
    counted twice.
    """
    from torch.autograd import DeviceType

    calls: Dict[str, int] = {}
    microseconds: Dict[str, float] = {}
    for event in events:
        if device == "cuda":
            if event.device_type != DeviceType.CUDA or event.is_user_annotation:
                continue
            duration = event.time_range.elapsed_us()
        else:
            duration = event.self_cpu_time_total
        calls[event.name] = calls.get(event.name, 0) + 1
        microseconds[event.name] = microseconds.get(event.name, 0.0) + duration
    total = sum(microseconds.values())
    ranked = sorted(microseconds, key=microseconds.get, reverse=True)[:top]
    kernels = [{"name": name, "calls": calls[name], "ms": microseconds[name] / 1e3, "share": microseconds[name] / total if total else 0.0} for name in ranked]
    return {"total_ms": total / 1e3, "top": kernels}


def attention_ops(step: Callable[[], None], device: str) -> Dict[str, int]:
    """Names (and call counts) of the attention operators and kernels that one call of ``step`` runs (see :func:`profile_step`)."""
    return profile_step(step, device)["attention_ops"]


def host_syncs(step: Callable[[], None]) -> Dict:
    """CUDA only: how many host-device synchronisations one call of ``step`` makes, and from which lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites: Dict[str, int] = {}
    for warning in caught:
        if "synchroniz" in str(warning.message):
            site = f"{warning.filename}:{warning.lineno}"
            sites[site] = sites.get(site, 0) + 1
    return {"count": sum(sites.values()), "sites": sites}


# ----------------------------------------------------------------------------- worker processes


def _worker_main(connection, factory: Callable, kwargs: Dict, threads: Optional[int]) -> None:
    if threads:
        torch.set_num_threads(threads)
    try:
        runner = factory(**kwargs)
        device = kwargs.get("device", "cpu")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            # fairseq's Trainer resets the peak after every update to log gb_free; keep the peak of the whole run.
            torch.cuda.reset_peak_memory_stats = lambda *args, **kw: None
        connection.send(("ok", {"memory_before_steps_mib": peak_memory_mib(device), **runner_info(runner)}))
        while True:
            command, argument = connection.recv()
            if command == "stop":
                connection.send(("ok", {"peak_memory_mib": peak_memory_mib(device)}))
                return
            result = getattr(runner, command)(**argument)
            release_memory(runner, device)
            connection.send(("ok", result))
    except BaseException:  # report any failure (out of memory included) to the parent instead of dying silently
        connection.send(("error", traceback.format_exc()))


def release_memory(runner, device: str) -> None:
    """Between commands, hand back what an idle worker does not need: gradients and cached blocks.

    Workers wait side by side (on one GPU, or in the CPU's memory). Both
    training paths set gradients to None at the start of every step anyway.
    """
    model = getattr(runner, "model", None)
    if model is not None:
        for parameter in model.parameters():
            parameter.grad = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        # glibc keeps freed activations in its heap; give them back to the system.
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def runner_info(runner) -> Dict:
    return {key: getattr(runner, key) for key in ("batch_seconds", "num_parameters") if hasattr(runner, key)}


class Worker:
    """``factory(**kwargs)`` built in a fresh process; its methods are called there through :meth:`call`.

    A fresh process per configuration gives each its own peak memory
    (``ru_maxrss`` is a high-water mark of the whole process), and lets the
    parent interleave configurations step by step.
    """

    def __init__(self, factory: Callable, kwargs: Dict, threads: Optional[int] = None):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, factory, kwargs, threads), daemon=True)
        self.process.start()
        self.info = None
        self.error: Optional[str] = None

    def _receive(self):
        status, payload = self.connection.recv()
        if status == "error":
            self.error = payload
            self.process.join()
            raise WorkerError(payload)
        return payload

    def ready(self) -> Dict:
        if self.info is None:
            self.info = self._receive()
        return self.info

    def call(self, command: str, **argument):
        self.send(command, **argument)
        return self.receive()

    def send(self, command: str, **argument) -> None:
        """Start ``command`` without waiting for it: workers sent one each run at the same time."""
        if self.error:
            raise WorkerError(self.error)
        self.connection.send((command, argument))

    def receive(self):
        """The result of the command :meth:`send` started."""
        if self.error:
            raise WorkerError(self.error)
        return self._receive()

    def stop(self) -> Dict:
        if self.error:
            return {}
        self.connection.send(("stop", {}))
        result = self._receive()
        self.process.join()
        return result


class WorkerError(RuntimeError):
    """A worker process failed; the message is its traceback."""


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def error_line(text: str) -> str:
    """The line of a worker's traceback that names the exception (``InductorError: CppCompileError: ...``), not the
    last line, which for a multi-line message (a compiler's output) says nothing; the last line if none does."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    named = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return (named or lines or [text])[-1]

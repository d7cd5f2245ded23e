"""Training-step throughput (audio seconds per wall second) and peak memory, side by side with fairseq's wav2vec 2.0.

One step = forward, backward and optimizer update on one fixed batch of
``--clips`` clips of ``--seconds`` seconds (the same batch audio for every
configuration). Configurations are ``MODEL_PATH`` names: the model is one of
``cfS``, ``cfL`` (ours), ``w2v2_base`` (fairseq's wav2vec2_base_librispeech.yaml:
raw waveform, transformer, quantizer), ``w2v2_conformer``
(wav2vec2_conformer_base_librispeech.yaml: the same width and depth with
conformer layers); the path is ``trainer`` (fairseq's ``Trainer.train_step``,
what fairseq-hydra-train runs) or ``bare`` (a plain PyTorch loop, the
trainer-overhead reference). A name may end in Hydra overrides of its own,
each after a colon: ``cfL_trainer:common.memory_efficient_bf16=true``. Each
configuration lives in its own process, the repetitions are interleaved across
configurations, and the median step is reported.

    python -m benchmarks.bench_train_throughput --device cuda --precision bf16 --peak-tflops 989
"""
import argparse
import logging
import os
import tempfile
from typing import Dict, List, Tuple

import torch

from .common import (
    PRECISIONS,
    SAMPLE_RATE,
    TrainingRunner,
    Worker,
    WorkerError,
    default_output,
    error_line,
    start_benchmark,
    summarize,
    write_corpus,
    write_json,
)

DEFAULT_CONFIGS = "cfS_trainer,cfS_bare,cfL_trainer,cfL_bare,w2v2_base_trainer,w2v2_conformer_trainer"
# The issues' targets: cf_L per audio second at least 8x wav2vec 2.0 base at 128 x 10 s (and elsewhere), at least 3x at
# 8 x 10 s; fairseq's trainer at most 15% over a bare loop; cf_L at least 35% model FLOP utilisation at 512 clips;
# cf_S fine-tuning at least 20 updates per second at 32 x 4 s.
TARGET_SPEEDUP_OVER_W2V2 = 8.0
TARGET_SPEEDUP_OVER_W2V2_AT_8_CLIPS = 3.0
TARGET_TRAINER_OVERHEAD = 0.15
TARGET_MFU_AT_512_CLIPS = 0.35
TARGET_FINETUNING_UPDATES_PER_S = 20.0
# Overrides that change how a configuration runs, not what it computes: the eager reference of a compiled
# configuration, and the bare loop a trainer is compared with, are found without them.
COMPILE_OVERRIDES = ("model.compile=", "model.compile_mode=", "bench.")
TRAINER_ONLY_OVERRIDES = ("common.",)


def reference_key(name: str, ignored: Tuple[str, ...]) -> Tuple[str, str, Tuple[str, ...]]:
    """(model, path, overrides without those starting with ``ignored``): configurations with equal keys differ only there."""
    model, path, overrides = parse_config(name)
    return model, path, tuple(sorted(o for o in overrides if not o.startswith(ignored)))


def is_compiled(name: str) -> bool:
    return "model.compile=true" in parse_config(name)[2]


def parse_config(name: str) -> Tuple[str, str, List[str]]:
    """``MODEL_PATH[:OVERRIDE...]`` -> (model, path, overrides)."""
    base, *overrides = name.split(":")
    model, _, path = base.rpartition("_")
    if not model or path not in ("trainer", "bare") or not all("=" in override for override in overrides):
        raise argparse.ArgumentTypeError(f"configuration {name!r} is not MODEL_trainer or MODEL_bare, then any :KEY=VALUE")
    return model, path, overrides


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fairseq's common.fp16 / common.bf16 on the trainer path, autocast on the bare path")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated MODEL_PATH[:KEY=VALUE...] names")
    parser.add_argument("--clips", type=int, default=8, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and repetition")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before the first repetition (default 1 on cpu, 3 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--parallel-warmup", action="store_true",
                        help="run the first warm-up step of every configuration at once (compilation in parallel; "
                             "their memory adds up while it lasts)")
    parser.add_argument("--profile-top", type=int, default=15, help="kernels (cuda) or operators (cpu) listed in time_by_kernel")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense TFLOP/s at --precision, to report model FLOP utilisation (MFU)")
    parser.add_argument("--output", default=None, help="JSON file (default experiments/train_throughput/results/<device>[_<precision>].json)")
    return parser.parse_args(argv)


def ratios(configs: Dict[str, Dict]) -> Dict[str, float]:
    """Throughput of each of our configurations over wav2vec 2.0 base; each trainer's overhead over the bare loop with the
    same model settings (fairseq's ``common.`` settings aside); each compiled configuration over its eager twin."""
    throughput = {name: c["audio_s_per_s"] for name, c in configs.items() if "audio_s_per_s" in c}
    out = {}
    for name, value in throughput.items():
        model, path, _ = parse_config(name)
        for reference in ("w2v2_base", "w2v2_conformer"):
            # The plain configuration if there is one, else the first with overrides.
            candidates = sorted((other for other in throughput if parse_config(other)[:2] == (reference, path)), key=lambda other: ":" in other)
            if candidates and not model.startswith("w2v2"):
                out[f"{name}_over_{reference}_{path}"] = value / throughput[candidates[0]]
        if path == "trainer":
            key = reference_key(name, TRAINER_ONLY_OVERRIDES)
            bare = [other for other in throughput if parse_config(other)[1] == "bare"
                    and reference_key(other, TRAINER_ONLY_OVERRIDES) == (model, "bare", key[2])]
            if bare:
                out[f"{name}_overhead"] = throughput[bare[0]] / value - 1.0
        if is_compiled(name):
            key = reference_key(name, COMPILE_OVERRIDES)
            eager = [other for other in throughput if not is_compiled(other) and reference_key(other, COMPILE_OVERRIDES) == key]
            if eager:
                out[f"{name}_over_eager"] = value / throughput[eager[0]]
    return out


def targets(ratio: Dict[str, float], configs: Dict[str, Dict], clips: int) -> Dict[str, Dict]:
    """The issues' targets that this run's batch size speaks to, for every configuration they concern."""
    def check(value, target, at_least=True):
        return {"value": value, "target": target, "met": value >= target if at_least else value <= target}

    checks = {}
    speedup = TARGET_SPEEDUP_OVER_W2V2_AT_8_CLIPS if clips <= 8 else TARGET_SPEEDUP_OVER_W2V2
    for key, value in ratio.items():
        if key.startswith("cfL_trainer") and key.endswith("_over_w2v2_base_trainer"):
            checks[f"{key}_at_least_{speedup:g}x"] = check(value, speedup)
        if key.endswith("_overhead") and key.startswith(("cfS_", "cfL_")):
            checks[f"{key}_at_most_15pct"] = check(value, TARGET_TRAINER_OVERHEAD, at_least=False)
    for name, entry in configs.items():
        if name.startswith("cfL_trainer") and clips >= 512 and "mfu" in entry:
            checks[f"{name}_mfu_at_least_35pct"] = check(entry["mfu"], TARGET_MFU_AT_512_CLIPS)
        if name.startswith("cfS_ft_trainer") and "updates_per_s" in entry:
            checks[f"{name}_at_least_20_updates_per_s"] = check(entry["updates_per_s"], TARGET_FINETUNING_UPDATES_PER_S)
    return checks


def run(args: argparse.Namespace, data: str) -> Dict:
    names: List[str] = [n.strip() for n in args.configs.split(",") if n.strip()]
    if len(set(names)) != len(names):
        raise SystemExit(f"a configuration is named twice in --configs: {sorted(n for n in names if names.count(n) > 1)}")
    warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 1)
    # The workers hand their cached CUDA memory back between commands; one untimed step re-fills it.
    rep_warmup = 1 if args.device == "cuda" else 0
    clip_samples = int(args.seconds * SAMPLE_RATE)
    workers: Dict[str, Worker] = {}
    configs: Dict[str, Dict] = {}
    for name in names:
        model, path, overrides = parse_config(name)
        kwargs = dict(model=model, path=path, device=args.device, precision=args.precision, data=data,
                      num_clips=args.clips, clip_samples=clip_samples, overrides=overrides)
        workers[name] = Worker(TrainingRunner, kwargs, args.threads)
        configs[name] = {"model": model, "path": path, "overrides": overrides, "step_times_s": []}

    def attempt(name, action):
        if "error" in configs[name]:
            return None
        try:
            return action(workers[name])
        except WorkerError as error:
            configs[name]["error"] = error_line(str(error))
            logging.error(f"{name} failed:\n{error}")
            return None

    for name in names:
        info = attempt(name, lambda w: w.ready())
        if info:
            configs[name].update(info)
    if args.parallel_warmup and warmup > 0:
        # The first step compiles a compiled configuration: all of them at once, on the CPU's cores side by side.
        for name in names:
            attempt(name, lambda w: w.send("time_steps", warmup=1, steps=0))
        for name in names:
            attempt(name, lambda w: w.receive())
        warmup -= 1
    for name in names:
        attempt(name, lambda w: w.call("time_steps", warmup=warmup, steps=0))
    for rep in range(args.reps):
        # Rotate the order so that no configuration always runs first (or right after the slowest).
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            times = attempt(name, lambda w: w.call("time_steps", warmup=rep_warmup, steps=args.steps))
            if times:
                configs[name]["step_times_s"].extend(times)
                logging.info(f"rep {rep} {name}: {', '.join(f'{t:.3f}' for t in times)} s")
    for name in names:
        diagnostics = attempt(name, lambda w: w.call("diagnostics", profile_top=args.profile_top))
        if diagnostics:
            configs[name].update(diagnostics)
        memory = attempt(name, lambda w: w.stop())
        if memory:
            configs[name].update(memory)
        entry = configs[name]
        if entry["step_times_s"]:
            entry["step"] = summarize(entry["step_times_s"])
            median = entry["step"]["median_s"]
            entry["audio_s_per_s"] = entry["batch_seconds"] / median
            entry["updates_per_s"] = 1.0 / median
            if entry.get("warmup_step_times_s"):
                # The first step of a compiled configuration compiles it (each configuration is its own process).
                entry["first_step_s"] = entry["warmup_step_times_s"][0]
            if entry.get("flops_per_step"):
                entry["tflops_per_s"] = entry["flops_per_step"] / median / 1e12
                if args.peak_tflops:
                    entry["mfu"] = entry["tflops_per_s"] / args.peak_tflops
    ratio = ratios(configs)
    return {"configs": configs, "ratios": ratio, "targets": targets(ratio, configs, args.clips)}


def print_table(results: Dict) -> None:
    width = max([24] + [len(name) + 2 for name in results["configs"]])
    print(f"{'config':<{width}}{'step s':>10}{'audio s/s':>12}{'peak MiB':>12}{'TFLOP/s':>10}{'ops/step':>10}{'first s':>9}")
    for name, c in results["configs"].items():
        if "error" in c:
            print(f"{name:<{width}}  failed: {c['error']}")
            continue
        print(f"{name:<{width}}{c['step']['median_s']:>10.3f}{c['audio_s_per_s']:>12.2f}{c.get('peak_memory_mib', float('nan')):>12.0f}"
              f"{c.get('tflops_per_s', float('nan')):>10.3f}{c.get('device_operations_per_step', c.get('dispatched_ops_per_step', 0)):>10d}"
              f"{c.get('first_step_s', float('nan')):>9.1f}")
    for key, value in results["ratios"].items():
        print(f"{key}: {value:.3f}")
    for name, c in results["configs"].items():
        kernels = c.get("time_by_kernel", {}).get("top", [])[:5]
        if kernels:
            print(f"{name}, where one step's time goes: " + "; ".join(f"{k['share']:.0%} {k['name'][:70]}" for k in kernels))


def main(argv=None) -> None:
    args = parse_args(argv)
    start_benchmark(args.device)
    with tempfile.TemporaryDirectory() as data:
        write_corpus(data, args.clips, args.seconds)
        os.makedirs(os.path.join(data, "checkpoints"))
        results = run(args, data)
    print_table(results)
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["threads_used"] = args.threads or torch.get_num_threads()
    notes = [
        "Each configuration runs in its own process; repetitions are interleaved and rotated; medians over all timed steps.",
        "Peak memory: torch.cuda.max_memory_allocated on cuda (fairseq's per-update reset disabled), "
        "the process's ru_maxrss on cpu (includes Python, torch and the dataset; compare memory_before_steps_mib).",
        "flops_per_step: FlopCounterMode over one update, depthwise-convolution backward corrected (see common.count_step_flops).",
        "dispatched_ops_per_step: the operations of one update that are not views (common.DispatchedOps); "
        "each launches at least one GPU kernel, and below about 128 clips their number bounds a GPU step. "
        "Counted on the eager step, also for a compiled configuration (a dispatch mode would make dynamo skip it); "
        "device_operations_per_step (cuda) counts what the profiled step, compiled or not, ran on the GPU.",
        "first_step_s: the first warm-up step, which for a compiled configuration includes compiling it "
        "(inductor's caches on disk, shared by the configurations of a run, can shorten later ones).",
    ]
    write_json(args.output or default_output("bench_train_throughput", args.device, args.precision), "bench_train_throughput", settings, results, args.device, notes, argv)


if __name__ == "__main__":
    main()

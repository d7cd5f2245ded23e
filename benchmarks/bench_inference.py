"""Inference: clip embeddings per second (the mean of the unmasked frame embeddings of ``extract_features``).

For each model, batches of ``--clips`` clips of ``--seconds`` seconds (with the
all-valid padding mask the collater produces) on the CPU with 1 thread and with
all usable cores, and with ``--device cuda`` on the device (autocast at
``--precision``). Weights are random: speed does not depend on them.

    python -m benchmarks.bench_inference --device cuda --precision bf16
"""
import argparse
import logging
import os
from typing import Dict, List

import torch

from fairseq_logmel_conformer.models.logmel_conformer import masked_mean

from .common import PRECISIONS, SAMPLE_RATE, attention_ops, default_output, load_config, start_benchmark, summarize, time_call, write_json

AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast dtype on cuda; the CPU runs stay fp32")
    parser.add_argument("--models", default="cfS,cfL", help="comma-separated models of ours (cfS, cfL, tiny)")
    parser.add_argument("--clips", type=int, default=8, help="clips per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--reps", type=int, default=5, help="timed batches per setting")
    parser.add_argument("--cpu-threads", default=None, help="comma-separated CPU thread counts (default: 1 and all usable cores)")
    parser.add_argument("--output", default=None, help="JSON file (default experiments/inference/results/<device>[_<precision>].json)")
    return parser.parse_args(argv)


def build_model(name: str) -> torch.nn.Module:
    from fairseq import tasks

    cfg = load_config(name, ["task.data=unused", "common.cpu=true", "common.fp16=false"])
    return tasks.setup_task(cfg.task).build_model(cfg.model).eval()


def measure(model, device: str, clips: int, seconds: float, reps: int, precision: str) -> Dict:
    source = 0.1 * torch.randn(clips, int(seconds * SAMPLE_RATE), device=device)
    padding_mask = torch.zeros_like(source, dtype=torch.bool)
    dtype = AUTOCAST[precision] if device == "cuda" else None

    def embed():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            return masked_mean(*model.extract_features(source, padding_mask))

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    embed()
    summary = summarize([time_call(embed, device) for _ in range(reps)])
    result = {**summary, "embeddings_per_s": clips / summary["median_s"], "audio_s_per_s": clips * seconds / summary["median_s"]}
    result["attention_ops"] = attention_ops(embed, device)
    if device == "cuda":
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    start_benchmark(args.device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads: List[int] = [int(t) for t in args.cpu_threads.split(",")] if args.cpu_threads else sorted({1, usable})
    results: Dict = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = build_model(name)
        results[name] = {"num_parameters": sum(p.numel() for p in model.parameters())}
        for count in threads:
            torch.set_num_threads(count)
            results[name][f"cpu_{count}_threads"] = measure(model, "cpu", args.clips, args.seconds, args.reps, "fp32")
            logging.info(f"{name} cpu {count} threads: {results[name][f'cpu_{count}_threads']['embeddings_per_s']:.2f} clips/s")
        if args.device == "cuda":
            results[name]["cuda"] = measure(model.cuda(), "cuda", args.clips, args.seconds, args.reps, args.precision)
            logging.info(f"{name} cuda: {results[name]['cuda']['embeddings_per_s']:.1f} clips/s")
    for name, entry in results.items():
        rates = ", ".join(f"{k}: {v['embeddings_per_s']:.2f}" for k, v in entry.items() if isinstance(v, dict))
        print(f"{name} clip embeddings/s ({args.clips} x {args.seconds} s batches): {rates}")
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["cpu_threads_used"] = threads
    write_json(args.output or default_output("bench_inference", args.device, args.precision), "bench_inference", settings, results, args.device, argv=argv)


if __name__ == "__main__":
    main()

"""Training step time and peak memory against clip length, at a fixed batch audio.

For each model and clip length, a fresh process trains on batches of
``--batch-seconds`` of audio cut into clips of that length (80 s: 32 x 2.5 s ...
2 x 40 s). The linear layers cost the same whatever the length; attention
grows with it (each clip's cost is quadratic in its steps), so the step time
per audio second shows where attention starts to dominate. The FLOP share of
attention (QK^T and attention-times-V, forward and backward) is reported with
the length beyond which it would exceed half of all FLOPs.

    python -m benchmarks.bench_clip_length --device cuda --precision bf16 --models cfS,cfL,w2v2_base
"""
import argparse
import logging
import os
import tempfile
from typing import Dict, List

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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--models", default="cfS,cfL", help="comma-separated models (cfS, cfL, w2v2_base, w2v2_conformer)")
    parser.add_argument("--path", choices=("trainer", "bare"), default="trainer", help="fairseq's Trainer or the bare loop")
    parser.add_argument("--lengths", default="2.5,5,10,20,40", help="comma-separated clip lengths in seconds")
    parser.add_argument("--batch-seconds", type=float, default=80.0, help="audio per batch; clips = batch-seconds / length (at least 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 on cpu, 3 on cuda)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per worker (default: torch's)")
    parser.add_argument("--output", default=None, help="JSON file (default experiments/clip_length/results/<device>[_<precision>].json)")
    return parser.parse_args(argv)


def measure(args, model: str, seconds: float, warmup: int) -> Dict:
    clips = max(1, round(args.batch_seconds / seconds))
    entry: Dict = {"model": model, "clip_s": seconds, "clips": clips}
    with tempfile.TemporaryDirectory() as data:
        write_corpus(data, clips, seconds)
        os.makedirs(os.path.join(data, "checkpoints"))
        kwargs = dict(model=model, path=args.path, device=args.device, precision=args.precision, data=data,
                      num_clips=clips, clip_samples=int(seconds * SAMPLE_RATE))
        worker = Worker(TrainingRunner, kwargs, args.threads)
        try:
            entry.update(worker.ready())
            times = worker.call("time_steps", warmup=warmup, steps=args.steps)
            entry["step"] = summarize(times)
            entry.update(worker.call("diagnostics", profile=False))
            entry.update(worker.stop())
        except WorkerError as error:
            # Out of memory at long clips is a result, not a crash of the benchmark.
            entry["error"] = error_line(str(error))
            logging.error(f"{model} {seconds} s failed:\n{error}")
            return entry
    entry["audio_s_per_s"] = entry["batch_seconds"] / entry["step"]["median_s"]
    entry["step_s_per_audio_s"] = entry["step"]["median_s"] / entry["batch_seconds"]
    share = entry["attention_flop_share"]
    # Attention FLOPs per audio second grow linearly with clip length, the rest stays constant.
    entry["attention_half_of_flops_at_s"] = seconds * (1 - share) / share if share else None
    logging.info(f"{model} {seconds} s x {clips}: {entry['step']['median_s']:.3f} s/step, "
                 f"peak {entry['peak_memory_mib']:.0f} MiB, attention {100 * share:.1f}% of FLOPs")
    return entry


def relative_costs(entries: List[Dict]) -> None:
    """Step time and memory per audio second relative to the shortest clip length of the same model."""
    by_model: Dict[str, List[Dict]] = {}
    for entry in entries:
        if "step" in entry:
            by_model.setdefault(entry["model"], []).append(entry)
    for runs in by_model.values():
        reference = min(runs, key=lambda e: e["clip_s"])
        for entry in runs:
            entry["time_per_audio_s_vs_shortest"] = entry["step_s_per_audio_s"] / reference["step_s_per_audio_s"]


def main(argv=None) -> None:
    args = parse_args(argv)
    start_benchmark(args.device, args.threads)
    warmup = args.warmup if args.warmup is not None else (3 if args.device == "cuda" else 1)
    lengths = [float(x) for x in args.lengths.split(",") if x.strip()]
    entries = [measure(args, model.strip(), seconds, warmup) for model in args.models.split(",") if model.strip() for seconds in lengths]
    relative_costs(entries)
    print(f"{'model':<16}{'clip s':>8}{'clips':>7}{'step s':>9}{'s/audio s':>11}{'vs short':>10}{'peak MiB':>10}{'attn FLOPs':>12}")
    for e in entries:
        if "error" in e:
            print(f"{e['model']:<16}{e['clip_s']:>8}{e['clips']:>7}  failed: {e['error']}")
            continue
        print(f"{e['model']:<16}{e['clip_s']:>8}{e['clips']:>7}{e['step']['median_s']:>9.3f}{e['step_s_per_audio_s']:>11.4f}"
              f"{e['time_per_audio_s_vs_shortest']:>10.2f}{e['peak_memory_mib']:>10.0f}{100 * e['attention_flop_share']:>11.1f}%")
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["threads_used"] = args.threads or torch.get_num_threads()
    notes = [
        "One fresh process per (model, length); peak memory is torch.cuda.max_memory_allocated on cuda, ru_maxrss on cpu.",
        "attention_flop_share: QK^T and attention-times-V (forward + backward) over all counted FLOPs of one step; "
        "for w2v2_conformer the relative-position term is not included.",
    ]
    write_json(args.output or default_output("bench_clip_length", args.device, args.precision), "bench_clip_length", settings, entries, args.device, notes, argv)


if __name__ == "__main__":
    main()

"""Input pipeline: manifest -> decoded, cropped, batched waveforms, and the log-mel frontend, in audio seconds per second.

1. fairseq's data loader, as the trainer builds it (``task.get_batch_iterator``
   with the config's max_tokens), for each ``--workers`` count, audio format and
   source sample rate (other rates are resampled to 16 kHz when read);
2. one clip read (``dataset[i]``: decode, resample, crop) in the main process,
   with decoding alone beside it;
3. the log-mel frontend alone on the CPU and (with ``--device cuda``) on the device.

With the training benchmark's JSON for the same machine (``--train-results``,
by default ``experiments/train_throughput/results/<device>.json``), it reports how many times the
model's consumption the loader supplies (target >= 3x) and the frontend's share
of the training step (target < 5%).

    python -m benchmarks.bench_input_pipeline --device cuda --workers 0,1,2,4
"""
import argparse
import gc
import json
import logging
import os
import tempfile
import time
from typing import Dict, List

import soundfile as sf
import torch

from .common import SAMPLE_RATE, default_output, load_config, start_benchmark, summarize, time_call, write_corpus, write_json

TARGET_SUPPLY_RATIO = 3.0
TARGET_FRONTEND_SHARE = 0.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default="cfS", help="pre-training config whose task and batch size are used (the pipeline is the same for cfS and cfL)")
    parser.add_argument("--clips", type=int, default=64, help="clips in the generated corpus")
    parser.add_argument("--seconds", type=float, default=12.0, help="clip length; longer than the 10 s crop so that crops happen")
    parser.add_argument("--formats", default="wav,flac", help="comma-separated audio formats to write the corpus in")
    parser.add_argument("--source-rates", default="16000,44100", help="comma-separated sample rates to write the corpus at")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated num_workers values")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the corpus per loader configuration (median reported)")
    parser.add_argument("--frontend-clips", type=int, default=8, help="clips per frontend batch")
    parser.add_argument("--frontend-seconds", type=float, default=10.0, help="clip length of the frontend batch")
    parser.add_argument("--reps", type=int, default=5, help="timed frontend calls")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--train-results", default=None, help="bench_train_throughput JSON of this machine (default: experiments/train_throughput/results/<device>.json if present)")
    parser.add_argument("--output", default=None, help="JSON file (default experiments/input_pipeline/results/<device>.json)")
    return parser.parse_args(argv)


def csv(text: str, kind=str) -> List:
    return [kind(item) for item in text.split(",") if item.strip()]


def loader_epoch(task, cfg, num_workers: int, epoch: int) -> Dict:
    """One epoch through fairseq's batch iterator: audio seconds delivered, total and after the first batch."""
    dataset = task.dataset("train")
    start = time.perf_counter()
    iterator = task.get_batch_iterator(
        dataset=dataset,
        max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        ignore_invalid_inputs=True,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed,
        num_workers=num_workers,
        epoch=epoch,
        data_buffer_size=cfg.dataset.data_buffer_size,
        disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=True)
    audio, first_audio, first_batch_s, batches = 0.0, 0.0, None, 0
    for batch in iterator:
        padding = batch["net_input"]["padding_mask"]
        source = batch["net_input"]["source"]
        audio += float(source.numel() if padding is None else (~padding).sum()) / SAMPLE_RATE
        batches += 1
        if first_batch_s is None:
            first_batch_s, first_audio = time.perf_counter() - start, audio
    total_s = time.perf_counter() - start
    # Free this epoch's loader now: a forked worker of the next one would otherwise inherit it and try to shut it down.
    del iterator
    gc.collect()
    return {
        "audio_s": audio,
        "batches": batches,
        "seconds": total_s,
        "first_batch_s": first_batch_s,
        "audio_s_per_s": audio / total_s,
        "steady_audio_s_per_s": (audio - first_audio) / (total_s - first_batch_s) if batches > 1 else None,
    }


def bench_loader(args, corpus: str, source_rate: int, extension: str) -> Dict:
    cfg = load_config(args.model, [f"task.data={corpus}", "common.cpu=true"])
    from fairseq import tasks

    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    dataset = task.dataset("train")
    results: Dict = {"max_tokens": cfg.dataset.max_tokens, "max_sample_size": cfg.task.max_sample_size}
    # One clip at a time in this process: what one loader worker can deliver.
    read = [time_call(lambda i=i: dataset[i], "cpu") for i in range(min(len(dataset), 16))]
    decode = [time_call(lambda i=i: sf.read(dataset.audio_path(i), dtype="float32"), "cpu") for i in range(min(len(dataset), 16))]
    clip_s = min(args.seconds, cfg.task.max_sample_size / SAMPLE_RATE)
    results["read_clip"] = {**summarize(read), "audio_s_per_s": clip_s / summarize(read)["median_s"]}
    results["decode_only"] = {**summarize(decode), "audio_s_per_s": args.seconds / summarize(decode)["median_s"]}
    for workers in csv(args.workers, int):
        epochs = [loader_epoch(task, cfg, workers, epoch + 1) for epoch in range(args.epochs)]
        rates = sorted(e["audio_s_per_s"] for e in epochs)
        steady = sorted(e["steady_audio_s_per_s"] for e in epochs if e["steady_audio_s_per_s"])
        results[f"workers_{workers}"] = {
            "audio_s_per_s": rates[len(rates) // 2],
            "steady_audio_s_per_s": steady[len(steady) // 2] if steady else None,
            "epochs": epochs,
        }
        logging.info(f"{extension} {source_rate} Hz workers={workers}: {rates[len(rates) // 2]:.1f} audio s/s")
    return results


def bench_frontend(args, device: str) -> Dict:
    from fairseq_logmel_conformer.modules.frontend import LogmelFrontend

    frontend = LogmelFrontend().to(device)
    waveform = torch.randn(args.frontend_clips, int(args.frontend_seconds * SAMPLE_RATE), device=device) * 0.1
    audio = args.frontend_clips * args.frontend_seconds
    with torch.no_grad():
        frontend(waveform)
        times = [time_call(lambda: frontend(waveform), device) for _ in range(args.reps)]
    summary = summarize(times)
    return {**summary, "batch_audio_s": audio, "audio_s_per_s": audio / summary["median_s"]}


def compare_with_training(results: Dict, train: Dict, device: str) -> Dict:
    """Supply over consumption for each training configuration, and the frontend's share of each step."""
    consumption = {name: c["audio_s_per_s"] for name, c in train["results"]["configs"].items() if "audio_s_per_s" in c}
    best_loader = max(
        entry[key]["audio_s_per_s"] for entry in results["loader"].values() for key in entry if key.startswith("workers_")
    )
    worst_case = min(
        max(entry[key]["audio_s_per_s"] for key in entry if key.startswith("workers_")) for entry in results["loader"].values()
    )
    frontend_rate = results["frontend"][device]["audio_s_per_s"]
    out = {"train_results_device": train["machine"].get("gpu") or train["machine"]["cpu"], "configs": {}}
    for name, rate in consumption.items():
        entry = {"model_audio_s_per_s": rate, "supply_ratio_best": best_loader / rate, "supply_ratio_worst_format": worst_case / rate}
        if not name.startswith("w2v2"):
            # Both scale linearly with audio, so per-audio-second costs compare steps of different batch sizes.
            entry["frontend_share_of_step"] = rate / frontend_rate
            entry["frontend_under_5pct"] = entry["frontend_share_of_step"] < TARGET_FRONTEND_SHARE
        entry["supply_at_least_3x"] = entry["supply_ratio_worst_format"] >= TARGET_SUPPLY_RATIO
        out["configs"][name] = entry
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    start_benchmark(args.device, args.threads)
    results: Dict = {"loader": {}, "frontend": {}}
    for extension in csv(args.formats):
        for rate in csv(args.source_rates, int):
            with tempfile.TemporaryDirectory() as corpus:
                write_corpus(corpus, args.clips, args.seconds, source_rate=rate, extension=extension)
                results["loader"][f"{extension}_{rate}hz"] = bench_loader(args, corpus, rate, extension)
    results["frontend"]["cpu"] = bench_frontend(args, "cpu")
    if args.device == "cuda":
        results["frontend"]["cuda"] = bench_frontend(args, "cuda")
    train_path = args.train_results or default_output("bench_train_throughput", args.device)
    if os.path.isfile(train_path):
        with open(train_path) as f:
            results["against_training"] = compare_with_training(results, json.load(f), args.device)
        results["against_training"]["train_results"] = os.path.relpath(train_path)
    for name, entry in results["loader"].items():
        rates = ", ".join(f"{k}: {v['audio_s_per_s']:.0f}" for k, v in entry.items() if k.startswith("workers_"))
        print(f"loader {name}: read one clip {entry['read_clip']['audio_s_per_s']:.0f} audio s/s; {rates}")
    for device, entry in results["frontend"].items():
        print(f"frontend {device}: {entry['audio_s_per_s']:.0f} audio s/s")
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["threads_used"] = torch.get_num_threads()
    notes = ["Loader rates count valid (unpadded) samples; the first batch includes worker start-up, steady_* leaves it out."]
    write_json(args.output or default_output("bench_input_pipeline", args.device), "bench_input_pipeline", settings, results, args.device, notes, argv)


if __name__ == "__main__":
    main()

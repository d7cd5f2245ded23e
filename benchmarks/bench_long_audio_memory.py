"""Peak memory of windowed inference on long recordings: 1 minute, 10 minutes, 1 hour.

For each duration a generated recording is written to a WAV file, then embedded
in a fresh worker process (``ru_maxrss`` is a high-water mark of the whole
process; on CUDA the peak is ``torch.cuda.max_memory_allocated``). The worker
loads the model and embeds a 30 s recording twice first (a file written the
same way), so that the baseline includes the model, the file reader and a batch of
windows; the reported growth is the peak over the long recording minus that
baseline. Two modes:

- ``stream``: :meth:`AudioModel.iter_embeddings`, chunks dropped as they come:
  the growth should be flat (about zero) for any length.
- ``embed``: :meth:`AudioModel.embed`, which returns all frame embeddings:
  the growth should be the size of the returned arrays and nothing more.

    python -m benchmarks.bench_long_audio_memory                      # tiny model, CPU
    python -m benchmarks.bench_long_audio_memory --model cfS --device cuda
    python -m benchmarks.bench_long_audio_memory --checkpoint checkpoint_best.pt

Without ``--checkpoint`` the model has random weights: memory does not depend on them.
"""
import argparse
import os
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np
import soundfile as sf
import torch

from fairseq_logmel_conformer.data.synthetic import SOUND_CLASSES, synthesize
from fairseq_logmel_conformer.inference import AudioModel
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerModel

from .common import Worker, WorkerError, default_output, error_line, load_config, peak_memory_mib, start_benchmark, write_json

MODES = ("stream", "embed")
# Growth beyond the returned arrays above this counts as "not flat" in the summary.
FLAT_TOLERANCE_MIB = 32.0


def write_recording(path: str, seconds: float, sample_rate: int) -> None:
    """A mono 16-bit WAV of ``seconds``: the generated sound classes in turn, 10 s each, written 10 s at a time."""
    rng = np.random.default_rng(0)
    block = int(10 * sample_rate)
    total = int(seconds * sample_rate)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as f:
        for index, start in enumerate(range(0, total, block)):
            f.write(synthesize(SOUND_CLASSES[index % len(SOUND_CLASSES)], min(block, total - start), sample_rate, rng))


class LongAudioRunner:
    """An :class:`AudioModel` in a worker process, warmed up on the recording ``warmup_path``."""

    def __init__(
        self, device: str, model: str, checkpoint: Optional[str], window_seconds: float, overlap_seconds: float, batch_size: int, warmup_path: str
    ):
        settings = dict(device=device, window_seconds=window_seconds, overlap_seconds=overlap_seconds, batch_size=batch_size)
        if checkpoint:
            self.model = AudioModel.from_checkpoint(checkpoint, **settings)
        else:
            cfg = load_config(model)
            self.model = AudioModel(LogmelConformerModel(cfg.model), **settings)
        self.device = device
        self.num_parameters = sum(p.numel() for p in self.model.model.parameters())
        # The resident set still grows on the second pass (allocator caches); it is steady from then on.
        for _ in range(2):
            self.model.embed(warmup_path)

    def run(self, path: str, mode: str) -> Dict:
        """Embed ``path`` in ``mode``; memory in MiB before and after, seconds, steps and output size."""
        baseline = peak_memory_mib(self.device)
        cpu_baseline = peak_memory_mib("cpu")
        start = time.perf_counter()
        if mode == "embed":
            result = self.model.embed(path)
            steps = len(result.timestamps)
            output_bytes = result.frame_embeddings.nbytes + result.timestamps.nbytes + result.clip_embedding.nbytes
        else:
            steps = sum(len(chunk.values) for chunk in self.model.iter_embeddings(path))
            output_bytes = 0
        if self.device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = peak_memory_mib(self.device)
        report = {
            "baseline_mib": baseline,
            "peak_mib": peak,
            "growth_mib": peak - baseline,
            "output_mib": output_bytes / 2**20,
            "growth_beyond_output_mib": peak - baseline - output_bytes / 2**20,
            # What decoding the whole recording (mono float32 at its own rate) would take, for scale.
            "whole_recording_mib": sf.info(path).frames * 4 / 2**20,
            "steps": steps,
            "wall_s": seconds,
        }
        if self.device == "cuda":
            report["cpu_rss_baseline_mib"] = cpu_baseline
            report["cpu_rss_peak_mib"] = peak_memory_mib("cpu")
        return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--model", default="tiny", help="pre-training config of the random-weight model: tiny, cfS or cfL (default: %(default)s)")
    parser.add_argument("--checkpoint", help="use this checkpoint instead of random weights")
    parser.add_argument("--minutes", default="1,10,60", help="comma-separated recording lengths in minutes (default: %(default)s)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="rate of the generated WAV files (resampled when not 16000)")
    parser.add_argument("--window-seconds", type=float, default=10.0)
    parser.add_argument("--overlap-seconds", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each worker (default: torch's)")
    parser.add_argument("--workdir", help="folder for the generated recordings (default: a temporary folder)")
    parser.add_argument("--output", help="JSON file (default: experiments/long_audio_memory/results/<device>.json)")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, workdir: str) -> List[Dict]:
    warmup_path = os.path.join(workdir, "warmup_30s.wav")
    write_recording(warmup_path, 30.0, args.sample_rate)
    kwargs = dict(
        device=args.device, model=args.model, checkpoint=args.checkpoint,
        window_seconds=args.window_seconds, overlap_seconds=args.overlap_seconds, batch_size=args.batch_size,
        warmup_path=warmup_path,
    )
    results = []
    for minutes in [float(m) for m in args.minutes.split(",")]:
        path = os.path.join(workdir, f"recording_{minutes:g}min.wav")
        write_recording(path, minutes * 60, args.sample_rate)
        for mode in MODES:
            worker = Worker(LongAudioRunner, kwargs, args.threads)
            try:
                info = worker.ready()
                report = worker.call("run", path=path, mode=mode)
                worker.stop()
            except WorkerError as error:
                report, info = {"error": error_line(str(error))}, {}
            entry = {"minutes": minutes, "mode": mode, "num_parameters": info.get("num_parameters"), **report}
            results.append(entry)
            print(
                f"{minutes:6g} min  {mode:6s}  baseline {entry.get('baseline_mib', float('nan')):8.1f} MiB  "
                f"growth {entry.get('growth_mib', float('nan')):7.1f} MiB  output {entry.get('output_mib', float('nan')):6.1f} MiB  "
                f"{entry.get('wall_s', float('nan')):6.1f} s  (whole recording decoded: {entry.get('whole_recording_mib', float('nan')):.0f} MiB)"
            )
        os.remove(path)
    return results


def summarize_flatness(results: List[Dict]) -> Dict[str, Dict]:
    """Per mode: growth beyond the returned arrays at the longest length minus that at the shortest."""
    summary = {}
    for mode in MODES:
        runs = sorted((r for r in results if r["mode"] == mode and "error" not in r), key=lambda r: r["minutes"])
        if len(runs) < 2:
            continue
        excess = runs[-1]["growth_beyond_output_mib"] - runs[0]["growth_beyond_output_mib"]
        summary[mode] = {
            "from_minutes": runs[0]["minutes"],
            "to_minutes": runs[-1]["minutes"],
            "extra_growth_mib": excess,
            "flat": excess < FLAT_TOLERANCE_MIB,
        }
    return summary


def main(argv=None) -> None:
    args = parse_args(argv)
    start_benchmark(args.device)
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        results = measure(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory() as workdir:
            results = measure(args, workdir)
    flatness = summarize_flatness(results)
    for mode, verdict in flatness.items():
        print(f"{mode}: {verdict['extra_growth_mib']:+.1f} MiB beyond the returned arrays from {verdict['from_minutes']:g} to {verdict['to_minutes']:g} min: {'flat' if verdict['flat'] else 'NOT flat'}")
    settings = {key: value for key, value in vars(args).items() if key not in ("output", "workdir")}
    notes = [
        "growth_mib = peak memory while embedding the recording minus the peak after loading the model and embedding a 30 s recording twice",
        "memory is ru_maxrss (CPU) or torch.cuda.max_memory_allocated (CUDA), in a fresh worker process per run",
        f"flat: growth beyond the returned arrays rises by less than {FLAT_TOLERANCE_MIB} MiB from the shortest to the longest recording",
    ]
    write_json(args.output or default_output("bench_long_audio_memory", args.device), "bench_long_audio_memory", settings, {"runs": results, "flatness": flatness}, args.device, notes, argv)


if __name__ == "__main__":
    main()

"""Where one loader worker's time goes, per batch, reading a packed corpus through fairseq's loader (num_workers=1).

    OMP_NUM_THREADS=1 python experiments/packed_corpus/profile_packed_worker.py PACKED_DIR --output results/worker_profile.json

PACKED_DIR: a packed corpus of 10 s+ clips (train split), e.g. the benchmark's (64 generated 12 s clips repeated
to 3,000). One epoch iterator runs ``--epochs`` epochs, keeping its worker as training does. Wrappers installed
before the worker forks time, in the worker, each call of: the dataset's batch (torch's fetcher: ``__getitems__``
and the collater), the crop reads within it (``PackedSplit.read_into``), the index queue's ``get`` and the data
queue's ``put``, and the pickling of each batch (``ForkingPickler.dumps``, in the queue's feeder thread). The rest
of the worker's CPU (from /proc) is torch's worker loop, the feeder thread's writes and the kernel. Each wrapped
call adds about 2 us of its own.
"""
import argparse
import json
import multiprocessing.queues
import os
import statistics
import sys
import time

import torch
from multiprocessing.reduction import ForkingPickler
from torch.utils.data._utils import fetch

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPOSITORY)
from benchmarks.bench_input_pipeline import epoch_iterator, loader_epoch  # noqa: E402
from benchmarks.common import git_commit, load_config, machine_description  # noqa: E402
from fairseq_logmel_conformer.data.packed import PackedSplit  # noqa: E402

SECTIONS = ("batch", "crop_reads", "index_get", "batch_put", "pickle")
# Per section: wall seconds, CPU seconds of the calling thread, calls; shared with the forked worker.
_totals = torch.zeros((len(SECTIONS), 3), dtype=torch.float64).share_memory_()
_counts = _totals.numpy()


def _timed(section: str, function):
    row = SECTIONS.index(section)

    def timed(*args, **kwargs):
        if torch.utils.data.get_worker_info() is None:
            return function(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            _counts[row] += (time.perf_counter() - wall, time.thread_time() - cpu, 1)

    return timed


def install_wrappers() -> None:
    fetch._MapDatasetFetcher.fetch = _timed("batch", fetch._MapDatasetFetcher.fetch)
    PackedSplit.read_into = _timed("crop_reads", PackedSplit.read_into)
    multiprocessing.queues.Queue.get = _timed("index_get", multiprocessing.queues.Queue.get)
    multiprocessing.queues.Queue.put = _timed("batch_put", multiprocessing.queues.Queue.put)
    dumps = ForkingPickler.dumps.__func__
    ForkingPickler.dumps = classmethod(_timed("pickle", lambda cls, obj, protocol=None: dumps(cls, obj, protocol)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packed_dir")
    parser.add_argument("--epochs", type=int, default=8, help="epochs through one iterator (the first is left out of the medians)")
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(1)
    install_wrappers()
    from fairseq import tasks

    cfg = load_config("cfS", [f"task.data={args.packed_dir}", "common.cpu=true"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    iterator = epoch_iterator(task, cfg, 1, 1)
    epochs = []
    for _ in range(args.epochs):
        _counts[:] = 0
        result = loader_epoch(iterator)
        batches = result["batches"]
        ms = lambda seconds: 1e3 * seconds / batches  # noqa: E731
        sections = {name: {"wall_ms": ms(_counts[row, 0]), "cpu_ms": ms(_counts[row, 1]), "calls_per_batch": _counts[row, 2] / batches}
                    for row, name in enumerate(SECTIONS)}
        # Crop reads happen inside the batch; the other sections are disjoint.
        timed_cpu = sum(sections[name]["cpu_ms"] for name in SECTIONS if name != "crop_reads")
        epochs.append({
            "epoch": result["epoch"],
            "audio_s_per_s": result["audio_s_per_s"],
            "steady_audio_s_per_s": result["steady_audio_s_per_s"],
            "worker_cpu_ms_per_batch": ms(result["workers_cpu_s"]),
            "main_process_cpu_ms_per_batch": ms(result["main_process_cpu_s"]),
            "sections": sections,
            "worker_rest_cpu_ms": ms(result["workers_cpu_s"]) - timed_cpu,
            "load_average_1min": result["load_average_1min"],
        })
        print(f"epoch {result['epoch']}: {result['audio_s_per_s']:.0f} audio s/s, worker {ms(result['workers_cpu_s']):.3f} ms CPU a batch: "
              + ", ".join(f"{name} {sections[name]['cpu_ms']:.3f}" for name in SECTIONS), flush=True)
    later = epochs[1:] or epochs
    med = lambda values: statistics.median(values)  # noqa: E731
    summary = {
        "audio_s_per_s": med([e["audio_s_per_s"] for e in later]),
        "worker_cpu_ms_per_batch": med([e["worker_cpu_ms_per_batch"] for e in later]),
        "main_process_cpu_ms_per_batch": med([e["main_process_cpu_ms_per_batch"] for e in later]),
        "section_cpu_ms": {name: med([e["sections"][name]["cpu_ms"] for e in later]) for name in SECTIONS},
        "section_wall_ms": {name: med([e["sections"][name]["wall_ms"] for e in later]) for name in SECTIONS},
        "worker_rest_cpu_ms": med([e["worker_rest_cpu_ms"] for e in later]),
    }
    payload = {
        "command": " ".join(["python", *sys.argv]),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_description("cpu"),
        "settings": {"config": "cfS", "max_tokens": cfg.dataset.max_tokens, "max_sample_size": cfg.task.max_sample_size,
                     "clips": len(task.dataset("train")), "epochs": args.epochs, "num_workers": 1,
                     "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        "notes": ["medians over the epochs after the first; each wrapped call adds about 2 us of its own"],
        "summary": summary,
        "epochs": epochs,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

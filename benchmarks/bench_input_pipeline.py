"""Input pipeline: manifest -> decoded, cropped, batched waveforms, and the log-mel frontend, in audio seconds per second.

Sections (``--sections``, default ``loader,frontend``):

* ``loader``: fairseq's data loader as the trainer builds it (``task.get_batch_iterator``
  with the config's max_tokens), for each ``--workers`` count and each corpus of
  ``--formats`` at each ``--source-rates`` (other rates are resampled to 16 kHz
  when read); ``packed`` is the generated clips packed by ``logmel-pack``
  (``--packed-clips`` manifest entries) and read by the same task. The
  configurations take turns (``--repeats`` rounds, the order rotating; in each,
  one iterator runs ``--epochs`` epochs, keeping its workers as training does) and each
  reports the median epoch, and the median of the epochs after a loader's first, in
  audio seconds per wall second and per CPU second (the loader's processes
  together: the rate per core, whatever else the machine runs); also one clip read
  alone (``dataset[i]``) and decoding alone.
* ``frontend``: the log-mel frontend alone on the CPU and (``--device cuda``) on the device.
* ``storage``: real audio (``--real-audio`` folders) stored as raw int16 (a
  memory-mapped shard, a crop is a slice) against compressed alternatives (FLAC
  per clip, zlib or zstd per 1 s block): size per audio hour, and the CPU cost
  of a random 10 s crop as float32; and a CRC-32 of a 10 s clip.
* ``manifest``: a generated 2-million-clip manifest (``--manifest-clips``):
  load time, the training process's memory, and the memory one worker of
  fairseq's loader gains over an epoch that looks up every clip's path and
  manifest line (reading is stubbed out: the files do not exist), for the
  manifest held in arrays and, as before, in Python lists.
* ``pack``: ``logmel-pack``'s work on one hour of 44.1 kHz FLAC (real audio
  from ``--real-audio`` re-encoded, or generated), with 1 and ``--pack-jobs``
  processes: seconds per audio hour, per core.

With the training benchmark's JSON for the same machine (``--train-results``,
by default ``experiments/train_throughput/results/<device>.json``), it reports how many times the
model's consumption the loader supplies (target >= 3x) and the frontend's share
of the training step (target < 5%).

    python -m benchmarks.bench_input_pipeline --device cuda --workers 0,1,2,4
    python -m benchmarks.bench_input_pipeline --sections loader,storage,manifest,pack --formats flac,packed \\
        --real-audio /data/esc50/audio --output experiments/packed_corpus/results/cpu.json
"""
import argparse
import gc
import io
import json
import logging
import os
import resource
import statistics
import subprocess
import tempfile
import time
import zlib
from typing import Callable, Dict, List, Optional

import numpy as np
import soundfile as sf
import torch

from .common import SAMPLE_RATE, default_output, load_config, start_benchmark, summarize, time_call, write_corpus, write_json

TARGET_SUPPLY_RATIO = 3.0
TARGET_FRONTEND_SHARE = 0.05
SECTIONS = ("loader", "frontend", "storage", "manifest", "pack")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sections", default="loader,frontend", help=f"comma-separated, of {','.join(SECTIONS)}")
    parser.add_argument("--model", default="cfS", help="pre-training config whose task and batch size are used (the pipeline is the same for cfS and cfL)")
    parser.add_argument("--clips", type=int, default=64, help="clips in the generated corpus")
    parser.add_argument("--seconds", type=float, default=12.0, help="clip length; longer than the 10 s crop so that crops happen")
    parser.add_argument("--formats", default="wav,flac", help="comma-separated: audio formats to write the corpus in, and/or 'packed'")
    parser.add_argument("--source-rates", default="16000,44100", help="comma-separated sample rates to write the corpus at (packed: 16 kHz WAV)")
    parser.add_argument("--packed-clips", type=int, default=3000, help="manifest entries of the packed corpus (the generated clips, repeated)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated num_workers values")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per loader configuration and round")
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the loader configurations, in rotating order (medians reported)")
    parser.add_argument("--frontend-clips", type=int, default=8, help="clips per frontend batch")
    parser.add_argument("--frontend-seconds", type=float, default=10.0, help="clip length of the frontend batch")
    parser.add_argument("--reps", type=int, default=5, help="timed frontend calls")
    parser.add_argument("--real-audio", default=None, help="comma-separated folders of real audio (storage; pack re-encodes it to 44.1 kHz FLAC)")
    parser.add_argument("--storage-clips", type=int, default=400, help="real clips the storage section stores")
    parser.add_argument("--manifest-clips", type=int, default=2_000_000, help="entries of the generated manifest")
    parser.add_argument("--pack-hours", type=float, default=1.0, help="hours of 44.1 kHz FLAC the pack section packs")
    parser.add_argument("--pack-jobs", type=int, default=2, help="processes of the parallel pack")
    parser.add_argument("--scratch", default=None, help="folder for the generated corpora (default: the system's temporary folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--train-results", default=None, help="bench_train_throughput JSON of this machine (default: experiments/train_throughput/results/<device>.json if present)")
    parser.add_argument("--output", default=None, help="JSON file (default experiments/input_pipeline/results/<device>.json)")
    args = parser.parse_args(argv)
    unknown = set(csv(args.sections)) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    return args


def csv(text: str, kind=str) -> List:
    return [kind(item) for item in text.split(",") if item.strip()]


def median(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_seconds(who: Optional[int] = None) -> float:
    """CPU time of this process (RUSAGE_SELF), of its children that have been waited for (loader workers, once shut
    down: RUSAGE_CHILDREN), or of both (None)."""
    if who is not None:
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime
    return cpu_seconds(resource.RUSAGE_SELF) + cpu_seconds(resource.RUSAGE_CHILDREN)


def children_cpu_seconds() -> Dict[int, float]:
    """CPU seconds of each live child process (loader workers), from /proc: their time counts before they exit."""
    pids = set()
    for thread in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{thread}/children") as f:
                pids.update(int(pid) for pid in f.read().split())
        except OSError:
            continue
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def batch_memory_cost(samples: int, repeats: int = 30, dtype: torch.dtype = torch.int16) -> Dict:
    """CPU ms to fill one batch of ``samples`` of ``dtype`` (int16: what the packed collater returns for 16-bit
    audio): in new private memory, in new shared memory (what a loader worker would hand over without a ring: the
    kernel allocates and zeroes each new shared page) and in a shared buffer used again (what a worker's ring lends)."""
    from fairseq_logmel_conformer.data.shared_batches import batch_tensors

    nbytes = samples * torch.empty(0, dtype=dtype).element_size()

    def new_shared() -> torch.Tensor:
        return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, (1, samples))

    reused = new_shared()
    out = {"batch_mb": nbytes / 1e6, "dtype": str(dtype).removeprefix("torch.")}
    for name, allocate in (("private_ms", lambda: batch_tensors([((1, samples), dtype)])[0][0]), ("shared_ms", new_shared), ("reused_shared_ms", lambda: reused)):
        start = time.process_time()
        for _ in range(repeats):
            allocate().fill_(1)
        out[name] = (time.process_time() - start) / repeats * 1e3
    return out


# ----------------------------------------------------------------------------- loader


def epoch_iterator(task, cfg, num_workers: int, epoch: int):
    """fairseq's epoch batch iterator over the train split, as the trainer builds it once for a run.

    It keeps its loader, and the loader its worker processes, from one epoch to the
    next (fairseq's ``reuse_dataloader`` and ``persistent_workers``, on by
    default). ``disable_iterator_cache`` only keeps the task from handing back the
    iterator of another configuration of the same dataset.
    """
    return task.get_batch_iterator(
        dataset=task.dataset("train"),
        max_tokens=cfg.dataset.max_tokens,
        max_sentences=cfg.dataset.batch_size,
        ignore_invalid_inputs=True,
        required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed,
        num_workers=num_workers,
        epoch=epoch,
        data_buffer_size=cfg.dataset.data_buffer_size,
        disable_iterator_cache=True,
    )


def loader_epoch(epochs) -> Dict:
    """The next epoch of the epoch batch iterator ``epochs``: audio seconds delivered, total and after the first batch."""
    main_cpu_start = cpu_seconds(resource.RUSAGE_SELF)
    workers_cpu_start = children_cpu_seconds()
    start = time.perf_counter()
    iterator = epochs.next_epoch_itr(shuffle=True)
    audio, first_audio, first_batch_s, batches = 0.0, 0.0, None, 0
    for batch in iterator:
        padding = batch["net_input"]["padding_mask"]
        source = batch["net_input"]["source"]
        audio += float(source.numel() if padding is None else (~padding).sum()) / SAMPLE_RATE
        batches += 1
        if first_batch_s is None:
            first_batch_s, first_audio = time.perf_counter() - start, audio
    total_s = time.perf_counter() - start
    main_cpu_s = cpu_seconds(resource.RUSAGE_SELF) - main_cpu_start
    workers_cpu_s = sum(cpu - workers_cpu_start.get(pid, 0.0) for pid, cpu in children_cpu_seconds().items())
    cpu_s = main_cpu_s + workers_cpu_s
    return {
        "epoch": epochs.epoch,
        "audio_s": audio,
        "batches": batches,
        "seconds": total_s,
        "cpu_s": cpu_s,
        "main_process_cpu_s": main_cpu_s,
        "workers_cpu_s": workers_cpu_s,
        "first_batch_s": first_batch_s,
        "audio_s_per_s": audio / total_s,
        "steady_audio_s_per_s": (audio - first_audio) / (total_s - first_batch_s) if batches > 1 else None,
        "audio_s_per_cpu_s": audio / cpu_s,
        "load_average_1min": os.getloadavg()[0],
    }


def packed_corpus(args, scratch: str) -> str:
    """The generated 16 kHz clips packed by logmel-pack's code, ``--packed-clips`` entries (the clips repeated)."""
    from fairseq_logmel_conformer.data.manifest import read_manifest, write_manifest
    from fairseq_logmel_conformer.data.packed import pack_split

    source = write_corpus(os.path.join(scratch, "packed_source"), args.clips, args.seconds, source_rate=SAMPLE_RATE, extension="wav")
    manifest = read_manifest(os.path.join(source, "train.tsv"))
    repeated = os.path.join(scratch, "packed_manifest")
    os.makedirs(repeated)
    n = len(manifest)
    write_manifest(os.path.join(repeated, "train.tsv"), manifest.root, [(manifest.files[i % n], int(manifest.sizes[i % n])) for i in range(args.packed_clips)])
    out = os.path.join(scratch, "packed")
    pack_split(os.path.join(repeated, "train.tsv"), out, "train", jobs=1)
    return out


def setup_loader(args, name: str, corpus: str) -> Dict:
    """The task and dataset of one loader configuration, and one clip read (and decoded) alone."""
    cfg = load_config(args.model, [f"task.data={corpus}", "common.cpu=true"])
    from fairseq import tasks

    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    dataset = task.dataset("train")
    results: Dict = {"max_tokens": cfg.dataset.max_tokens, "max_sample_size": cfg.task.max_sample_size, "clips": len(dataset),
                     "dataset": type(dataset).__name__}
    clip_s = min(args.seconds, cfg.task.max_sample_size / SAMPLE_RATE)
    # One clip at a time in this process: what one loader worker can deliver.
    read = [time_call(lambda i=i: dataset[i], "cpu") for i in range(min(len(dataset), 16))]
    results["read_clip"] = {**summarize(read), "audio_s_per_s": clip_s / summarize(read)["median_s"]}
    if name != "packed":
        decode = [time_call(lambda i=i: sf.read(dataset.audio_path(i), dtype="float32"), "cpu") for i in range(min(len(dataset), 16))]
        results["decode_only"] = {**summarize(decode), "audio_s_per_s": args.seconds / summarize(decode)["median_s"]}
    return {"task": task, "cfg": cfg, "results": results}


def bench_loaders(args, scratch: str) -> Dict:
    """Every loader configuration, interleaved: each round runs each (corpus, workers) pair for ``--epochs`` epochs."""
    configs: Dict[str, Dict] = {}
    for extension in csv(args.formats):
        if extension == "packed":
            configs["packed"] = setup_loader(args, "packed", packed_corpus(args, scratch))
            continue
        for rate in csv(args.source_rates, int):
            corpus = write_corpus(os.path.join(scratch, f"{extension}_{rate}"), args.clips, args.seconds, source_rate=rate, extension=extension)
            configs[f"{extension}_{rate}hz"] = setup_loader(args, extension, corpus)
    runs = [(name, workers) for name in configs for workers in csv(args.workers, int)]
    epochs: Dict = {run: [] for run in runs}
    first_epoch = 1
    for round_number in range(args.repeats):
        shift = round_number % len(runs)
        for name, workers in runs[shift:] + runs[:shift]:
            config = configs[name]
            iterator = epoch_iterator(config["task"], config["cfg"], workers, first_epoch)
            for loader_epoch_number in range(1, args.epochs + 1):
                epochs[(name, workers)].append({**loader_epoch(iterator), "loader_epoch": loader_epoch_number})
            # Shut this loader's workers down now: a forked worker of the next loader would otherwise inherit it.
            del iterator
            gc.collect()
            first_epoch += args.epochs
            logging.info(f"{name} workers={workers}: {epochs[(name, workers)][-1]['audio_s_per_s']:.0f} audio s/s")
    results = {}
    for name, config in configs.items():
        entry = config["results"]
        for workers in csv(args.workers, int):
            runs_of = epochs[(name, workers)]
            later = [e for e in runs_of if e["loader_epoch"] > 1]
            entry[f"workers_{workers}"] = {
                "audio_s_per_s": median([e["audio_s_per_s"] for e in runs_of]),
                "steady_audio_s_per_s": median([e["steady_audio_s_per_s"] for e in runs_of]),
                "audio_s_per_cpu_s": median([e["audio_s_per_cpu_s"] for e in runs_of]),
                # Epochs after a loader's first: its workers already run, as in every epoch of a run but its first.
                "later_epochs": {
                    "audio_s_per_s": median([e["audio_s_per_s"] for e in later]),
                    "audio_s_per_cpu_s": median([e["audio_s_per_cpu_s"] for e in later]),
                } if later else None,
                "epochs": runs_of,
            }
        results[name] = entry
    return results


def packed_against_decoding(loader: Dict) -> Dict:
    """The packed corpus's rates over each decoded corpus's, for each worker count, in the same run."""
    if "packed" not in loader:
        return {}
    packed = loader["packed"]
    out = {}
    for name, entry in loader.items():
        if name == "packed":
            continue
        out[name] = {
            key: {metric: packed[key][metric] / entry[key][metric] for metric in ("audio_s_per_s", "audio_s_per_cpu_s")}
            for key in entry if key.startswith("workers_")
        }
    return out


# ----------------------------------------------------------------------------- storage


def real_clips(folders: List[str], limit: int) -> List[np.ndarray]:
    """Up to ``limit`` real clips (every k-th file of the folders, sorted) decoded to 16 kHz and quantised to int16."""
    from fairseq_logmel_conformer.data.audio import AUDIO_EXTENSIONS, AudioReadError, read_audio
    from fairseq_logmel_conformer.data.manifest import find_audio
    from fairseq_logmel_conformer.data.packed import quantize

    paths = [os.path.join(folder, f) for folder in folders for f in find_audio(folder, AUDIO_EXTENSIONS)]
    step = max(1, len(paths) // limit)
    clips = []
    for path in paths[::step][:limit]:
        try:
            samples, scale = quantize(read_audio(path, SAMPLE_RATE).numpy())
        except AudioReadError:
            continue
        if scale == np.float32(2.0**-15):
            clips.append(samples)
    return clips


def numcodecs_codecs() -> Dict:
    """numcodecs' zstd and blosc (lz4 after a byte shuffle, its fastest): {name: (codec, how)}, empty if not installed."""
    try:
        from numcodecs import Blosc, Zstd
    except ImportError:
        return {}
    return {
        "zstd3_1s_blocks": (Zstd(level=3), "numcodecs Zstd level 3 per 1 s block"),
        "blosc_lz4_shuffle_1s_blocks": (Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE), "numcodecs Blosc lz4 level 5, byte shuffle, per 1 s block"),
    }


def bench_storage(args, scratch: str) -> Dict:
    """Size and crop cost of each way to store the same real clips."""
    if not args.real_audio:
        return {"skipped": "no --real-audio"}
    clips = real_clips(csv(args.real_audio), args.storage_clips)
    total_samples = sum(len(c) for c in clips)
    hours = total_samples / SAMPLE_RATE / 3600
    crop = 10 * SAMPLE_RATE
    rng = np.random.default_rng(0)
    crops = []
    for _ in range(2000):
        i = int(rng.integers(len(clips)))
        length = len(clips[i])
        start = int(rng.integers(0, max(1, length - crop + 1)))
        crops.append((i, start, min(crop, length)))
    audio_s = sum(c[2] for c in crops) / SAMPLE_RATE
    block = SAMPLE_RATE
    results: Dict = {"clips": len(clips), "audio_hours": hours, "crop_seconds": 10, "crops": len(crops), "formats": {}}

    def measure(name: str, nbytes: int, read: Callable[[int, int, int], np.ndarray], note: str) -> None:
        for i, start, count in crops[:20]:
            if not np.array_equal(read(i, start, count), clips[i][start : start + count].astype(np.float32) * np.float32(2.0**-15)):
                raise AssertionError(f"{name} does not give back the stored samples")
        cpu = time.process_time()
        for i, start, count in crops:
            read(i, start, count)
        cpu = time.process_time() - cpu
        results["formats"][name] = {
            "mb_per_audio_hour": nbytes / 1e6 / hours,
            "ratio_to_raw": nbytes / (2 * total_samples),
            "crop_cpu_us": cpu / len(crops) * 1e6,
            "audio_s_per_cpu_s": audio_s / cpu,
            "how": note,
        }
        logging.info(f"storage {name}: {results['formats'][name]}")

    # Raw int16 in one memory-mapped .npy shard: a crop is a slice, converted to float32 as every format is here.
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])])
    shard_path = os.path.join(scratch, "storage_shard.npy")
    np.save(shard_path, np.concatenate(clips))
    shard = np.load(shard_path, mmap_mode="c").view(np.ndarray)
    out = torch.empty(crop)

    def raw(i, start, count):
        begin = offsets[i] + start
        target = out[:count]
        target.copy_(torch.from_numpy(shard[begin : begin + count]))
        return target.mul_(2.0**-15).numpy()

    measure("raw_int16_memmap", os.path.getsize(shard_path), raw, "numpy .npy shard, memory-mapped; torch int16->float32 copy, multiply")

    flac = []
    for c in clips:
        buffer = io.BytesIO()
        sf.write(buffer, c, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        flac.append(buffer.getvalue())

    def flac_read(i, start, count):
        with sf.SoundFile(io.BytesIO(flac[i])) as f:
            f.seek(start)
            return f.read(count, dtype="float32")

    measure("flac_per_clip", sum(len(b) for b in flac), flac_read, "FLAC (libsndfile, default level) per clip in memory; seek + read of the crop")

    def blocks_of(compress: Callable[[bytes], bytes]) -> List[List[bytes]]:
        return [[compress(c[j : j + block].tobytes()) for j in range(0, len(c), block)] for c in clips]

    def block_reader(blocks: List[List[bytes]], decompress: Callable[[bytes], bytes]):
        def read(i, start, count):
            first, last = start // block, (start + count - 1) // block
            samples = np.frombuffer(b"".join(decompress(b) for b in blocks[i][first : last + 1]), dtype=np.int16)
            begin = start - first * block
            return samples[begin : begin + count].astype(np.float32) * np.float32(2.0**-15)

        return read

    zlib_blocks = blocks_of(lambda data: zlib.compress(data, 1))
    measure("zlib1_1s_blocks", sum(len(b) for c in zlib_blocks for b in c), block_reader(zlib_blocks, zlib.decompress), "zlib level 1 per 1 s block")
    codecs = numcodecs_codecs()
    for name, (codec, how) in codecs.items():
        # numpy int16 blocks, so that blosc shuffles 2-byte samples.
        coded = [[codec.encode(c[j : j + block]) for j in range(0, len(c), block)] for c in clips]
        measure(name, sum(len(b) for c in coded for b in c), block_reader(coded, lambda b, codec=codec: bytes(codec.decode(b))), how)
    if not codecs:
        results["formats"]["numcodecs"] = {"skipped": "numcodecs is not installed"}
    ten_seconds = np.zeros(crop, dtype=np.int16)
    cpu = time.process_time()
    for _ in range(1000):
        zlib.crc32(ten_seconds)
    results["crc32_of_10s_clip_us"] = (time.process_time() - cpu) / 1000 * 1e6
    return results


# ----------------------------------------------------------------------------- manifest memory


def generate_manifest(path: str, clips: int, seed: int = 0) -> None:
    """AudioSet-like names (``unbalanced_train_segments/Y<11 chars>_<start>.000_<end>.000.flac``), 1-10 s clips."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", np.uint8)
    ids = alphabet[rng.integers(0, 64, size=(clips, 11))].view("S11").ravel()
    starts = rng.integers(0, 300, clips).tolist()
    sizes = rng.integers(SAMPLE_RATE, 10 * SAMPLE_RATE + 1, clips).tolist()
    with open(path, "w") as f:
        f.write(os.path.join(os.path.dirname(path), "audio") + "\n")
        for i in range(clips):
            f.write(f"unbalanced_train_segments/Y{ids[i].decode()}_{starts[i]}.000_{starts[i] + 10}.000.flac\t{sizes[i]}\n")


def memory_mb() -> Dict[str, float]:
    """This process's resident (RSS), proportional (PSS) and private (USS) memory, from /proc/self/smaps_rollup."""
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1]) / 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def manifest_worker_memory(manifest_dir: str, lists: bool) -> Dict:
    """One epoch of fairseq's loader (one worker) over the manifest, looking up every clip; the worker's memory."""
    from fairseq import tasks

    from fairseq_logmel_conformer.data.manifest import read_manifest

    before = memory_mb()
    start = time.perf_counter()
    manifest = read_manifest(os.path.join(manifest_dir, "train.tsv"))
    load_s = time.perf_counter() - start
    # The dataset probes 8 clips spread over the manifest when it is built: those files are made real.
    picks = np.unique(np.linspace(0, len(manifest) - 1, 8).round().astype(np.int64))
    for index in picks.tolist():
        path = manifest.audio_path(index)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, np.zeros(int(manifest.sizes[index]), np.int16), SAMPLE_RATE, format="WAV")
    del manifest
    crop = 160
    cfg = load_config("cfS", [f"task.data={manifest_dir}", "common.cpu=true", f"task.max_sample_size={crop}", "task.min_sample_size=0"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    dataset = task.dataset("train")
    if lists:
        # As before the manifest was held in arrays: a list of str and a list of int.
        dataset.manifest.files = list(dataset.manifest.files)
        dataset.manifest.sizes = dataset.manifest.sizes.tolist()
    gc.collect()
    loaded = memory_mb()
    silence = torch.zeros(crop)

    def read_item(index):
        # What a read looks up in the index; the audio itself is not read (the files do not exist).
        dataset.audio_path(index)
        dataset.location(index)
        return silence

    collate = dataset.collater

    def collater(samples):
        batch = collate(samples)
        batch["worker_memory_mb"] = memory_mb()
        return batch

    dataset.read_item = read_item
    dataset.collater = collater
    iterator = task.get_batch_iterator(dataset=dataset, max_tokens=crop * 4000, seed=1, num_workers=1, epoch=1, disable_iterator_cache=True)
    memory, items = [], 0
    start = time.perf_counter()
    for batch in iterator.next_epoch_itr(shuffle=True):
        memory.append(batch["worker_memory_mb"])
        items += len(batch["id"])
    epoch_s = time.perf_counter() - start
    del iterator
    gc.collect()
    first, last = memory[0], memory[-1]
    return {
        "index": "python lists" if lists else "arrays",
        "clips": len(dataset),
        "items_looked_up": items,
        "load_s": load_s,
        "training_process_mb_after_load": {k: loaded[k] - before[k] for k in loaded},
        "worker_mb_at_first_batch": first,
        "worker_mb_at_last_batch": last,
        "worker_growth_mb": {k: last[k] - first[k] for k in last},
        "epoch_s": epoch_s,
    }


def bench_manifest(args, scratch: str) -> Dict:
    """Load time of a generated manifest (median of 3), and worker memory: each variant in a fresh process."""
    from fairseq_logmel_conformer.data.manifest import read_manifest

    folder = os.path.join(scratch, "manifest")
    os.makedirs(folder)
    path = os.path.join(folder, "train.tsv")
    generate_manifest(path, args.manifest_clips)
    loads = []
    for _ in range(3):
        start = time.perf_counter()
        manifest = read_manifest(path)
        loads.append(time.perf_counter() - start)
        held = manifest.files.nbytes + manifest.sizes.nbytes
        del manifest
    results = {"clips": args.manifest_clips, "file_mb": os.path.getsize(path) / 1e6, "load_s": summarize(loads), "index_mb": held / 1e6}
    for lists in (False, True):
        command = [
            os.path.join(os.path.dirname(os.sys.executable), "python"), "-c",
            "import json, sys; from benchmarks.bench_input_pipeline import manifest_worker_memory; "
            f"print('RESULT ' + json.dumps(manifest_worker_memory({folder!r}, {lists})))",
        ]
        done = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              env=dict(os.environ, OMP_NUM_THREADS="1"))
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"manifest memory run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        results["lists" if lists else "arrays"] = json.loads(lines[-1][len("RESULT ") :])
        logging.info(f"manifest ({'lists' if lists else 'arrays'}): {results['lists' if lists else 'arrays']}")
    return results


# ----------------------------------------------------------------------------- packing


def flac_hour(args, folder: str) -> str:
    """``--pack-hours`` of 44.1 kHz FLAC in ``folder`` with its manifest: real audio re-encoded, or generated clips."""
    from fairseq_logmel_conformer.data.audio import AUDIO_EXTENSIONS, read_audio, resampler
    from fairseq_logmel_conformer.data.manifest import find_audio, write_manifest
    from fairseq_logmel_conformer.data.synthetic import write_dataset

    os.makedirs(folder)
    wanted = args.pack_hours * 3600 * 44100
    entries, total = [], 0
    sources = [os.path.join(d, f) for d in csv(args.real_audio or "") for f in find_audio(d, AUDIO_EXTENSIONS)]
    for number, source in enumerate(sources):
        if total >= wanted:
            break
        samples = resampler(SAMPLE_RATE, 44100)(read_audio(source, SAMPLE_RATE)).numpy()
        name = f"clip{number:05d}.flac"
        sf.write(os.path.join(folder, name), np.clip(samples, -1, 1), 44100, subtype="PCM_16")
        entries.append((name, int(np.ceil(len(samples) * SAMPLE_RATE / 44100))))
        total += len(samples)
    if total < wanted:
        count = int(np.ceil((wanted - total) / (10 * 44100)))
        for clip in write_dataset(folder, count, sample_rate=44100, seconds=(10.0, 10.0), extension="flac", seed=1):
            entries.append((clip["path"], int(np.ceil(clip["num_samples"] * SAMPLE_RATE / 44100))))
    write_manifest(os.path.join(folder, "train.tsv"), folder, entries)
    return os.path.join(folder, "train.tsv")


def bench_pack(args, scratch: str) -> Dict:
    from fairseq_logmel_conformer.data.packed import pack_split

    manifest = flac_hour(args, os.path.join(scratch, "flac44k"))
    results: Dict = {"source": "real audio re-encoded" if args.real_audio else "generated", "source_rate": 44100, "runs": []}
    for jobs in (1, args.pack_jobs, 1, args.pack_jobs):
        out = os.path.join(scratch, f"pack_{len(results['runs'])}")
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        report = pack_split(manifest, out, "train", jobs=jobs)
        wall = time.perf_counter() - start
        hours = report.samples / SAMPLE_RATE / 3600
        results["runs"].append({
            "jobs": jobs, "audio_hours": hours, "wall_s": wall, "cpu_s": cpu_seconds() - cpu_start,
            "wall_s_per_hour_per_core": wall * jobs / hours, "load_average_1min": os.getloadavg()[0],
        })
        logging.info(f"pack jobs={jobs}: {results['runs'][-1]}")
    for jobs in sorted({run["jobs"] for run in results["runs"]}):
        of = [run for run in results["runs"] if run["jobs"] == jobs]
        results[f"jobs_{jobs}"] = {
            "wall_s_per_hour_per_core": median([run["wall_s_per_hour_per_core"] for run in of]),
            "cpu_s_per_hour": median([run["cpu_s"] / run["audio_hours"] for run in of]),
        }
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


def supply_rate(workers_entry: Dict) -> float:
    """What a loader configuration supplies through a run: its epochs after the first (workers running), else all."""
    later = workers_entry.get("later_epochs")
    return later["audio_s_per_s"] if later else workers_entry["audio_s_per_s"]


def compare_with_training(results: Dict, train: Dict, device: str) -> Dict:
    """Supply over consumption for each training configuration, and the frontend's share of each step."""
    consumption = {name: c["audio_s_per_s"] for name, c in train["results"]["configs"].items() if "audio_s_per_s" in c}
    best_loader = max(supply_rate(entry[key]) for entry in results["loader"].values() for key in entry if key.startswith("workers_"))
    worst_case = min(max(supply_rate(entry[key]) for key in entry if key.startswith("workers_")) for entry in results["loader"].values())
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
    sections = csv(args.sections)
    results: Dict = {}
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        if "loader" in sections:
            results["loader"] = bench_loaders(args, scratch)
            results["packed_over_decoding"] = packed_against_decoding(results["loader"])
            results["batch_memory"] = batch_memory_cost(load_config(args.model).dataset.max_tokens)
        if "storage" in sections:
            results["storage"] = bench_storage(args, scratch)
        if "manifest" in sections:
            results["manifest"] = bench_manifest(args, scratch)
        if "pack" in sections:
            results["pack"] = bench_pack(args, scratch)
    if "frontend" in sections:
        results["frontend"] = {"cpu": bench_frontend(args, "cpu")}
        if args.device == "cuda":
            results["frontend"]["cuda"] = bench_frontend(args, "cuda")
    train_path = args.train_results or default_output("bench_train_throughput", args.device)
    if "loader" in sections and "frontend" in sections and os.path.isfile(train_path):
        with open(train_path) as f:
            results["against_training"] = compare_with_training(results, json.load(f), args.device)
        results["against_training"]["train_results"] = os.path.relpath(train_path)
    if "batch_memory" in results:
        entry = results["batch_memory"]
        print(f"one {entry['batch_mb']:.1f} MB {entry['dtype']} batch: {entry['private_ms']:.2f} ms in new private memory, {entry['shared_ms']:.2f} ms "
              f"in new shared memory, {entry['reused_shared_ms']:.2f} ms in a reused shared buffer")
    for name, entry in results.get("loader", {}).items():
        rates = ", ".join(
            f"{k}: {v['audio_s_per_s']:.0f} ({v['audio_s_per_cpu_s']:.0f} per CPU s"
            + (f"; after a loader's first epoch {v['later_epochs']['audio_s_per_s']:.0f}" if v["later_epochs"] else "") + ")"
            for k, v in entry.items() if k.startswith("workers_")
        )
        print(f"loader {name}: read one clip {entry['read_clip']['audio_s_per_s']:.0f} audio s/s; {rates}")
    for name, ratios in results.get("packed_over_decoding", {}).items():
        print(f"packed over {name}: " + ", ".join(f"{k}: {v['audio_s_per_s']:.1f}x" for k, v in ratios.items()))
    for name, entry in results.get("storage", {}).get("formats", {}).items():
        if "skipped" not in entry:
            print(f"storage {name}: {entry['mb_per_audio_hour']:.0f} MB/h, crop {entry['audio_s_per_cpu_s']:.0f} audio s per CPU s")
    if "manifest" in results:
        m = results["manifest"]
        print(f"manifest of {m['clips']} clips: load {m['load_s']['median_s']:.2f} s; worker growth (MB, USS) arrays "
              f"{m['arrays']['worker_growth_mb']['uss']:.0f}, lists {m['lists']['worker_growth_mb']['uss']:.0f}")
    for key, entry in results.get("pack", {}).items():
        if key.startswith("jobs_"):
            print(f"pack {key}: {entry['wall_s_per_hour_per_core']:.1f} s per audio hour per core")
    for device, entry in results.get("frontend", {}).items():
        print(f"frontend {device}: {entry['audio_s_per_s']:.0f} audio s/s")
    settings = {k: v for k, v in vars(args).items() if k != "output"}
    settings["threads_used"] = torch.get_num_threads()
    notes = [
        "Loader rates count valid (unpadded) samples. Each configuration builds fairseq's epoch iterator once a round and "
        "runs --epochs epochs through it, keeping its loader and workers as training does; the first batch of a loader's "
        "first epoch includes worker start-up, steady_* leaves it out, later_epochs are the epochs after its first.",
        "audio_s_per_cpu_s: audio seconds per CPU second of the loader's processes (the main process with its threads, "
        "and the workers, read from /proc at the end of the epoch): the rate per core whatever else runs on the machine.",
    ]
    settings["load_average_1min_at_end"] = os.getloadavg()[0]
    write_json(args.output or default_output("bench_input_pipeline", args.device), "bench_input_pipeline", settings, results, args.device, notes, argv)


if __name__ == "__main__":
    main()

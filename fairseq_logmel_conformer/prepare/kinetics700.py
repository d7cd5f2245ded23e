"""Kinetics-700: single-label classification of 700 actions from the videos' audio tracks.

Input: ``train.csv`` and ``validate.csv`` (``label,youtube_id,time_start,time_end,split``)
and a folder of downloaded videos, each at ``--video-dir``/``--filename-pattern``
(a Python format string with ``{label}``, ``{youtube_id}``, ``{time_start}``,
``{time_end}`` (integers) and ``{split}``; the default matches the usual
downloaders' ``abseiling/---QUuC4vJs_000003_000013.mp4``).

The first audio track of each video is decoded with PyAV (``pip install av``;
its wheels bundle FFmpeg, so no system FFmpeg is needed), resampled to 16 kHz
by FFmpeg's resampler, down-mixed by averaging the channels (as
:func:`~fairseq_logmel_conformer.data.audio.read_audio` does) and written as
16-bit FLAC to ``--audio-dir``, mirroring the video path.
Existing FLAC files are reused, so an interrupted run resumes and the videos
may be deleted afterwards. Videos that are missing, have no audio track, or
cannot be decoded are listed with the reason in ``<split>_missing.txt``.

Output: ``OUT`` with ``train`` = train.csv and ``valid`` = validate.csv;
``labels.txt`` lists the training labels in sorted order.
"""
import argparse
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, Optional, Tuple

import numpy as np
import soundfile as sf
from tqdm import tqdm

from .common import SAMPLE_RATE, Clip, check_label_name, probe, read_csv_dicts, write_folder

DEFAULT_PATTERN = "{label}/{youtube_id}_{time_start:06d}_{time_end:06d}.mp4"
SPLIT_FILES = {"train": "train.csv", "valid": "validate.csv"}
COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError("extracting audio from Kinetics videos needs PyAV: pip install av") from error
    return av


def decode_audio_track(video_path: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """First audio track of a video -> (float32 (S,) mono samples at 16 kHz, None), or (None, problem)."""
    av = _import_av()
    chunks = []
    try:
        with av.open(video_path) as container:
            if not container.streams.audio:
                return None, f"no audio track in {video_path}"
            # FFmpeg's resampler changes the rate only; channels are averaged below, as read_audio does
            # (FFmpeg's own down-mix would scale stereo by 1/sqrt(2) per channel instead).
            resampler = av.AudioResampler(format="fltp", rate=SAMPLE_RATE)
            for frame in container.decode(container.streams.audio[0]):
                chunks.extend(out.to_ndarray() for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except av.FFmpegError as error:
        return None, f"cannot decode the audio of {video_path}: {error}"
    if not chunks or sum(chunk.shape[1] for chunk in chunks) == 0:
        return None, f"empty audio track in {video_path}"
    return np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32), None


def extract_audio(video_path: str, flac_path: str) -> Optional[str]:
    """Write the first audio track of ``video_path`` as 16 kHz mono 16-bit FLAC; return None, or why not.

    Uses no torch, so it is safe in processes forked from one whose OpenMP threads have started.
    """
    samples, problem = decode_audio_track(video_path)
    if problem is not None:
        return problem
    os.makedirs(os.path.dirname(flac_path), exist_ok=True)
    # Written under another name first so that an interrupted run leaves no truncated FLAC to be reused.
    partial = flac_path + ".partial"
    sf.write(partial, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(partial, flac_path)
    return None


def _extract_job(paths: Tuple[str, str]) -> Optional[str]:
    return extract_audio(*paths)


def parse_time(value: str, where: str) -> int:
    """Kinetics times are whole seconds, written ``3`` or ``3.0``."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{where}: time {value!r} is not a number") from None
    if seconds != int(seconds):
        raise ValueError(f"{where}: time {value!r} is not a whole number of seconds")
    return int(seconds)


def read_split(csv_path: str, pattern: str) -> List[Tuple[str, str, str]]:
    """-> [(key, video path relative to the video folder, label)] in file order."""
    rows = []
    for number, record in read_csv_dicts(csv_path, COLUMNS):
        where = f"{csv_path}:{number}"
        label = check_label_name(record["label"].strip(), where)
        fields = dict(
            label=label,
            youtube_id=record["youtube_id"].strip(),
            time_start=parse_time(record["time_start"], where),
            time_end=parse_time(record["time_end"], where),
            split=record.get("split", "").strip(),
        )
        try:
            relative = pattern.format(**fields)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"filename pattern {pattern!r}: {error!r}; placeholders are {sorted(fields)}") from None
        rows.append((f"{fields['youtube_id']}_{fields['time_start']:06d}_{fields['time_end']:06d}", relative, label))
    return rows


def extract_split(rows: List[Tuple[str, str, str]], video_dir: str, audio_dir: str, jobs: int) -> List[Clip]:
    """Clips with their FLAC path relative to ``audio_dir``, extracting what is not there yet."""
    clips: List[Optional[Clip]] = []
    # FLAC path -> (video path, positions of its rows), so that a repeated row is extracted once.
    todo: Dict[str, Tuple[str, List[int]]] = {}
    for key, video_relative, label in rows:
        flac_relative = os.path.splitext(video_relative)[0] + ".flac"
        flac_path, video_path = os.path.join(audio_dir, flac_relative), os.path.join(video_dir, video_relative)
        if os.path.isfile(flac_path):
            clips.append(Clip(key, flac_relative, (label,)))
        elif os.path.isfile(video_path):
            todo.setdefault(flac_path, (video_path, []))[1].append(len(clips))
            clips.append(None)
        else:
            clips.append(Clip(key, None, (label,), f"not found: {video_path}"))
    if todo:
        _import_av()
        work = [(video_path, flac_path) for flac_path, (video_path, _) in todo.items()]
        if jobs > 1:
            with ProcessPoolExecutor(jobs) as pool:
                problems = list(tqdm(pool.map(_extract_job, work, chunksize=16), total=len(work), desc="extracting audio", disable=None))
        else:
            problems = [_extract_job(paths) for paths in tqdm(work, desc="extracting audio", disable=None)]
        for (flac_path, (_, positions)), problem in zip(todo.items(), problems):
            for position in positions:
                key, _, label = rows[position]
                clips[position] = Clip(key, os.path.relpath(flac_path, audio_dir) if problem is None else None, (label,), problem)
    return clips


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset_dir", help="folder holding train.csv and validate.csv")
    parser.add_argument("--video-dir", required=True, help="root folder of the downloaded videos")
    parser.add_argument("--filename-pattern", default=DEFAULT_PATTERN, help="video path under --video-dir (default: %(default)s)")
    parser.add_argument("--audio-dir", help="where the extracted FLAC files go; the manifest root (default: OUT/audio)")


def prepare(args: argparse.Namespace) -> None:
    """Extract the audio tracks, then write OUT/{train,valid}.{tsv,labels} and OUT/labels.txt."""
    if not os.path.isdir(args.video_dir):
        raise FileNotFoundError(f"video folder {args.video_dir} does not exist")
    audio_dir = os.path.realpath(args.audio_dir or os.path.join(args.out, "audio"))
    os.makedirs(audio_dir, exist_ok=True)
    rows = {split: read_split(os.path.join(args.dataset_dir, name), args.filename_pattern) for split, name in SPLIT_FILES.items()}
    splits = {split: extract_split(split_rows, args.video_dir, audio_dir, args.jobs) for split, split_rows in rows.items()}
    vocabulary = sorted({label for _, _, label in rows["train"]})
    probed = probe(audio_dir, [clip for clips in splits.values() for clip in clips], args.jobs, args.min_samples)
    write_folder(args.out, audio_dir, splits, probed, vocabulary, multi_label=False)

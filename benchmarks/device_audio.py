"""Carry audio to the GPU machine: encode folders as Ogg Opus here, decode them to FLAC there.

The device machine takes at most 64 MiB along with the working tree, and ESC-50
with the unlabelled sets (7.7 h of 16 kHz audio, 250 MB as FLAC and Vorbis)
does not fit. libsndfile's Opus encoder is variable-rate: ``--compression-level
0.98`` gives about 12 kbit/s on these sets (0.97: 14, 0.93: 24, 0.9: 31), so all
of them take about 41 MB, which leaves room for the wheels and the working tree.
The log-mels see a lossy copy, the same in both arms of a comparison; results
from carried audio say so in their notes (``benchmarks/gpu_esc50.sh``).

    python -m benchmarks.device_audio encode SRC DEST [--compression-level 0.98]
    python -m benchmarks.device_audio decode DEST RESTORED

``encode`` mirrors ``SRC``: every audio file becomes ``<its name>.opus.ogg``
(mono, the file's own rate, which must be one of Opus's 8/12/16/24/48 kHz),
every other file (metadata) is copied. ``decode`` writes each ``.opus.ogg``
as 16-bit FLAC named after the original with a ``.flac`` extension, so ESC-50's
``meta/esc50.csv`` (which names ``.flac`` files) still matches, and copies the
rest. Both run in parallel and skip outputs that exist (a rerun resumes).
"""
import argparse
import functools
import os
import shutil
import sys
from typing import Callable, List, Optional, Tuple

import numpy as np
import soundfile as sf

from fairseq_logmel_conformer.data.audio import AUDIO_EXTENSIONS, AudioReadError, decode, open_audio_file
from fairseq_logmel_conformer.data.manifest import default_jobs, find_audio, parallel_map

ENCODED_SUFFIX = ".opus.ogg"
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def _read(path: str) -> Tuple[np.ndarray, int]:
    """float32 (n, C) and the file's rate; raises :class:`AudioReadError` naming the file."""
    with open_audio_file(path) as handle:
        return decode(handle, path), handle.samplerate


def _write(target: str, samples: np.ndarray, rate: int, **encoding) -> None:
    """Write through ``<target>.part``, so that a cut-off run leaves no file a rerun would keep."""
    sf.write(target + ".part", samples, rate, **encoding)
    os.replace(target + ".part", target)


def _encode(source: str, target: str, level: float) -> Optional[str]:
    samples, rate = _read(source)
    if rate not in OPUS_RATES:
        return f"{source}: {rate} Hz, Opus takes {OPUS_RATES}"
    _write(target, samples.mean(axis=1), rate, format="OGG", subtype="OPUS", compression_level=level)
    return None


def _decode(source: str, target: str) -> Optional[str]:
    samples, rate = _read(source)
    _write(target, samples, rate, format="FLAC", subtype="PCM_16")
    return None


def _convert(job: Tuple[Callable[[str, str], Optional[str]], str, str]) -> Optional[str]:
    """Convert one file; the reason it cannot be, or None."""
    convert, source, target = job
    try:
        return convert(source, target)
    except AudioReadError as error:
        return str(error)


def _mirror(src: str, dest: str, audio_suffixes: Tuple[str, ...], rename, convert, jobs: int) -> List[str]:
    """Convert the audio files under ``src`` into ``dest`` (names by ``rename``), copy the rest; return the problems."""
    audio = set(find_audio(src, audio_suffixes))
    work = []
    for folder, _, names in os.walk(src, followlinks=True):
        for name in names:
            relative = os.path.relpath(os.path.join(folder, name), src)
            target = os.path.join(dest, rename(relative) if relative in audio else relative)
            if os.path.exists(target):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if relative in audio:
                work.append((convert, os.path.join(src, relative), target))
            else:
                shutil.copyfile(os.path.join(src, relative), target)
    return [problem for problem in parallel_map(_convert, work, jobs, os.path.basename(src.rstrip("/"))) if problem]


def encode_folder(src: str, dest: str, level: float = 0.98, jobs: int = 1) -> List[str]:
    """Mirror ``src`` into ``dest`` with every audio file as Ogg Opus; return the files that could not be."""
    encode = functools.partial(_encode, level=level)
    return _mirror(src, dest, AUDIO_EXTENSIONS, lambda name: name + ENCODED_SUFFIX, encode, jobs)


def decode_folder(src: str, dest: str, jobs: int = 1) -> List[str]:
    """Mirror an :func:`encode_folder` output into ``dest`` with every clip as 16-bit FLAC under its original stem."""
    def flac_name(encoded: str) -> str:
        return os.path.splitext(encoded[: -len(ENCODED_SUFFIX)])[0] + ".flac"

    return _mirror(src, dest, (ENCODED_SUFFIX,), flac_name, _decode, jobs)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("encode", "decode"), help="encode: audio -> Ogg Opus; decode: Ogg Opus -> FLAC")
    parser.add_argument("src", help="folder to read (recursively)")
    parser.add_argument("dest", help="folder to write (created; files already there are kept)")
    parser.add_argument(
        "--compression-level", type=float, default=0.98,
        help="encode: libsndfile's Opus compression level, 0 (the highest bit rate) to 1 (the lowest); 0.98 gives about "
        "12 kbit/s on 16 kHz sound effects",
    )
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="parallel processes (default: the CPUs available)")
    args = parser.parse_args(argv)
    if args.command == "encode":
        problems = encode_folder(args.src, args.dest, args.compression_level, args.jobs)
    else:
        problems = decode_folder(args.src, args.dest, args.jobs)
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

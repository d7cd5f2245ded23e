"""Reading audio: whole files for training, ranges of files or arrays for inference.

What :func:`read_audio` and :func:`open_audio` do with unusual input:

* any sample rate (8, 22.05, 44.1, 48 kHz, ...) is resampled to the target rate
  with torchaudio's band-limited sinc resampler;
* any number of channels (stereo, 5.1, ...) is averaged to mono;
* any sample format soundfile decodes (8-bit unsigned, 16/24/32-bit PCM,
  float, double) becomes float32; integer PCM lands in [-1, 1], float files
  keep their values (a float file may exceed full scale);
* digital silence (all zeros) is returned as is: the log-mel frontend floors
  the power spectrum, so it gives finite features.

They raise :class:`AudioReadError`, naming the file, for a missing file, an
empty (0-byte) file, a file that is not audio (whatever its extension), a WAV
file cut short (its header declares more audio than the file holds), a stream
that fails to decode (e.g. a truncated FLAC), a file with no samples, and a
file holding NaN or Inf samples (float formats can store them; they would turn
the loss into NaN).
"""
import functools
import math
import os
import re
from typing import Callable, Optional, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")
AudioInput = Union[str, os.PathLike, np.ndarray, torch.Tensor]

# A decoded, resampled clip may differ from the header-based count of num_samples_at_rate
# by floating-point rounding in the resampler; anything more means the manifest is stale.
SIZE_TOLERANCE = 2

# The shortest clip the model turns into one 80 ms step: its centred STFT gives 1 + S // hop frames, and
# 4 frames fill a step, so S >= 3 hops (3 x 20 ms). The data pipeline and inference share this minimum
# (the encoder's ``geometry.min_samples``, which a test keeps equal to it for the shipped configs).
MIN_CLIP_SECONDS = 0.06

# libsndfile's log for a WAV whose data chunk runs past the end of the file: "data : 32000 (should be 15978)".
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioReadError(RuntimeError):
    """An audio file could not be decoded; the message names the file."""


def unreadable(path: str, reason: str) -> AudioReadError:
    """The error for ``path``: every message about an unreadable file starts the same way."""
    return AudioReadError(f"cannot read audio file {path}: {reason}")


def min_clip_samples(sample_rate: int) -> int:
    """The fewest samples at ``sample_rate`` that give one model step (:data:`MIN_CLIP_SECONDS`)."""
    return round(MIN_CLIP_SECONDS * sample_rate)


def too_short(num_samples: int, minimum: int, sample_rate: int) -> Optional[str]:
    """None if a clip of ``num_samples`` is long enough, else why not (prefix it with the clip's name)."""
    if num_samples >= minimum:
        return None
    return (
        f"too short: {num_samples} samples ({num_samples / sample_rate:.3f} s) at {sample_rate} Hz, "
        f"the minimum is {minimum} ({minimum / sample_rate:.3f} s)"
    )


def nonfinite_reason(samples: np.ndarray, first_frame: int = 0) -> Optional[str]:
    """None if every value of (n, C) ``samples`` is finite, else which frames hold NaN or Inf.

    Frames are counted from the start of the file (``first_frame`` is the position of ``samples[0]``).
    """
    bad = ~np.isfinite(samples)
    if not bad.any():
        return None
    frames = np.flatnonzero(bad.reshape(len(samples), -1).any(1)) + first_frame
    where = f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"
    return f"{int(bad.sum())} NaN or Inf sample values at {where}"


def to_mono_at_rate(samples: torch.Tensor, sample_rate: int, target_rate: int) -> torch.Tensor:
    """(S,) or (S, C) float samples at ``sample_rate`` -> (S',) mono at ``target_rate``.

    Channels are averaged; the rate is changed with torchaudio's band-limited
    sinc resampler.
    """
    if samples.dim() == 2:
        samples = samples.mean(1)
    elif samples.dim() != 1:
        raise ValueError(f"expected samples of shape (S,) or (S, C), got {tuple(samples.shape)}")
    if sample_rate != target_rate:
        samples = resampler(sample_rate, target_rate)(samples)
    return samples


@functools.lru_cache(maxsize=None)
def resampler(source_rate: int, target_rate: int) -> torchaudio.transforms.Resample:
    """torchaudio's resampler for one pair of rates, built once: its sinc kernel is the costly part."""
    return torchaudio.transforms.Resample(source_rate, target_rate)


def open_audio_file(path: str) -> sf.SoundFile:
    """Open ``path`` for reading; raise :class:`AudioReadError` saying why it cannot be, or if it was cut short."""
    if not os.path.isfile(path):
        raise unreadable(path, "no such file")
    if os.path.getsize(path) == 0:
        raise unreadable(path, "the file is empty (0 bytes)")
    try:
        handle = sf.SoundFile(path)
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise unreadable(path, str(error)) from error
    declared = _WAV_DATA_LOG.search(handle.extra_info)
    # A header declaring *less* than the file holds is a streamed WAV that was never finalised: readable.
    if declared and int(declared.group(1)) > int(declared.group(2)):
        handle.close()
        raise unreadable(
            path, f"truncated, the WAV header declares {declared.group(1)} bytes of audio but the file holds {declared.group(2)}"
        )
    return handle


def decode(handle: sf.SoundFile, path: str, start: int = 0, count: int = -1) -> np.ndarray:
    """Frames ``[start, start + count)`` of an open file (``count`` -1: to the end) as float32 (n, C).

    Raises :class:`AudioReadError` if decoding fails, if fewer than ``count``
    frames come back, or if a sample is NaN or Inf.
    """
    try:
        handle.seek(start)
        samples = handle.read(count, dtype="float32", always_2d=True)
    except Exception as error:
        raise unreadable(path, str(error)) from error
    if count >= 0 and samples.shape[0] != count:
        raise unreadable(path, f"got {samples.shape[0]} frames at frame {start}, expected {count}")
    reason = nonfinite_reason(samples, start)
    if reason:
        raise unreadable(path, reason)
    return samples


def read_audio(path: str, target_rate: int) -> torch.Tensor:
    """Decode ``path`` with soundfile -> float32 (S,) mono at ``target_rate`` (see the module docstring)."""
    with open_audio_file(path) as handle:
        samples = decode(handle, path)
        sample_rate = handle.samplerate
    if samples.shape[0] == 0:
        raise unreadable(path, "it holds no samples")
    return to_mono_at_rate(torch.from_numpy(samples), sample_rate, target_rate)


def num_samples_at_rate(path: str, target_rate: int) -> int:
    """Length of ``path`` in samples once resampled to ``target_rate`` (header only, no decoding)."""
    with open_audio_file(path) as handle:
        return int(np.ceil(handle.frames * target_rate / handle.samplerate))


class AudioReader:
    """Random access to a recording as mono float32 at ``target_rate``, one range at a time.

    ``raw_read(start, end)`` returns source frames ``[start, end)`` as (n, C) at
    ``source_rate``. Each range is resampled with enough source context on both
    sides, starting on the resampler's phase grid, so the result equals
    resampling the whole recording at once (up to float rounding) while only
    one range is ever decoded. ``close`` releases the source (a file handle);
    the reader is a context manager that calls it.
    """

    def __init__(
        self,
        raw_read: Callable[[int, int], np.ndarray],
        num_frames: int,
        source_rate: int,
        target_rate: int,
        close: Optional[Callable[[], None]] = None,
    ):
        if source_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {source_rate}")
        self.raw_read = raw_read
        self.num_frames = num_frames
        self.source_rate = source_rate
        self.target_rate = target_rate
        self.resampler = None if source_rate == target_rate else resampler(source_rate, target_rate)
        gcd = math.gcd(source_rate, target_rate)
        # torchaudio resamples in blocks: source frames [k*r, (k+1)*r) give output samples [k*q, (k+1)*q).
        self.block_in, self.block_out = source_rate // gcd, target_rate // gcd
        # Output samples are ceil(q * n / r), as torchaudio (and num_samples_at_rate) count them.
        self.num_samples = -(-num_frames * self.block_out // self.block_in)
        self.close = close or (lambda: None)

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` at ``target_rate``: (end - start,) float32."""
        if not 0 <= start <= end <= self.num_samples:
            raise ValueError(f"range [{start}, {end}) is outside the recording's {self.num_samples} samples")
        if self.resampler is None:
            return self.raw_read(start, end).mean(1, dtype=np.float32)
        context = self.resampler.width + self.block_in
        first_block = max(0, (start * self.block_in // self.block_out - context) // self.block_in)
        raw_start = first_block * self.block_in
        raw_end = min(self.num_frames, -(-end * self.block_in // self.block_out) + context)
        mono = torch.from_numpy(self.raw_read(raw_start, raw_end).mean(1, dtype=np.float32))
        offset = first_block * self.block_out
        return self.resampler(mono)[start - offset : end - offset].numpy()


def open_audio(audio: AudioInput, sample_rate: Optional[int], target_rate: int) -> AudioReader:
    """A reader for a file path (``sample_rate`` must be None: the file has one) or an array/tensor.

    Arrays are (S,) or (S, C) with channels last, float in [-1, 1] or signed integer PCM.
    """
    if isinstance(audio, (str, os.PathLike)):
        if sample_rate is not None:
            raise ValueError(f"sample_rate={sample_rate} was given with a file path; the file's own rate is used")
        path = os.fspath(audio)
        handle = open_audio_file(path)
        return AudioReader(
            lambda start, end: decode(handle, path, start, end - start), handle.frames, handle.samplerate, target_rate, close=handle.close
        )
    if sample_rate is None:
        raise ValueError("sample_rate is required for array input")
    samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[1] > samples.shape[0]:
        raise ValueError(
            f"expected audio of shape (S,) or (S, C) with channels last, got {samples.shape}; transpose a (C, S) array"
        )
    if np.issubdtype(samples.dtype, np.signedinteger):
        scale = 1.0 / 2 ** (8 * samples.dtype.itemsize - 1)
    elif np.issubdtype(samples.dtype, np.floating):
        scale = 1.0
        reason = nonfinite_reason(samples)
        if reason:
            raise ValueError(f"audio holds {reason}")
    else:
        raise ValueError(f"expected float or signed integer samples, got dtype {samples.dtype}")
    return AudioReader(
        lambda start, end: samples[start:end].astype(np.float32) * np.float32(scale), samples.shape[0], int(sample_rate), target_rate
    )

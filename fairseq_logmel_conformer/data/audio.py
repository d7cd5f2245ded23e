"""Reading audio files and fairseq manifests.

What :func:`read_audio` does with unusual input:

* any sample rate (8, 22.05, 44.1, 48 kHz, ...) is resampled to the target rate
  with torchaudio's band-limited sinc resampler;
* any number of channels (stereo, 5.1, ...) is averaged to mono;
* any sample format soundfile decodes (8-bit unsigned, 16/24/32-bit PCM,
  float, double) becomes float32; integer PCM lands in [-1, 1], float files
  keep their values (a float file may exceed full scale);
* digital silence (all zeros) is returned as is: the log-mel frontend floors
  the power spectrum, so it gives finite features.

It raises :class:`AudioReadError`, naming the file, for a missing file, an
empty (0-byte) file, a file that is not audio (whatever its extension), a WAV
file cut short (its header declares more audio than the file holds), a stream
that fails to decode (e.g. a truncated FLAC), a file with no samples, and a
file holding NaN or Inf samples (float formats can store them; they would turn
the loss into NaN).
"""
import functools
import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")

# A decoded, resampled clip may differ from the header-based count of num_samples_at_rate
# by floating-point rounding in the resampler; anything more means the manifest is stale.
SIZE_TOLERANCE = 2

# libsndfile's log for a WAV whose data chunk runs past the end of the file: "data : 32000 (should be 15978)".
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioReadError(RuntimeError):
    """An audio file could not be decoded; the message names the file."""


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
        raise AudioReadError(f"cannot read audio file {path}: no such file")
    if os.path.getsize(path) == 0:
        raise AudioReadError(f"cannot read audio file {path}: the file is empty (0 bytes)")
    try:
        handle = sf.SoundFile(path)
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioReadError(f"cannot read audio file {path}: {error}") from error
    declared = _WAV_DATA_LOG.search(handle.extra_info)
    # A header declaring *less* than the file holds is a streamed WAV that was never finalised: readable.
    if declared and int(declared.group(1)) > int(declared.group(2)):
        handle.close()
        raise AudioReadError(
            f"cannot read audio file {path}: truncated, the WAV header declares {declared.group(1)} bytes "
            f"of audio but the file holds {declared.group(2)}"
        )
    return handle


def read_audio(path: str, target_rate: int) -> torch.Tensor:
    """Decode ``path`` with soundfile -> float32 (S,) mono at ``target_rate`` (see the module docstring)."""
    with open_audio_file(path) as handle:
        try:
            samples = handle.read(dtype="float32", always_2d=True)
        except Exception as error:
            raise AudioReadError(f"cannot read audio file {path}: {error}") from error
        sample_rate = handle.samplerate
    if samples.shape[0] == 0:
        raise AudioReadError(f"cannot read audio file {path}: it holds no samples")
    finite = np.isfinite(samples)
    if not finite.all():
        raise AudioReadError(f"cannot read audio file {path}: {int((~finite).sum())} NaN or Inf sample values")
    return to_mono_at_rate(torch.from_numpy(samples), sample_rate, target_rate)


def num_samples_at_rate(path: str, target_rate: int) -> int:
    """Length of ``path`` in samples once resampled to ``target_rate`` (header only, no decoding)."""
    with open_audio_file(path) as handle:
        return int(np.ceil(handle.frames * target_rate / handle.samplerate))


@dataclass
class Manifest:
    """A fairseq audio manifest: a root folder, then one ``relative/path<TAB>num_samples`` per line.

    ``line_numbers`` holds the 1-based line of each entry when some lines were
    left out (see :func:`read_manifest`); otherwise entry ``i`` is on line ``i + 2``.
    """

    path: str
    root: str
    files: List[str]
    sizes: List[int]
    line_numbers: Optional[List[int]] = None

    def audio_path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])

    def line_number(self, index: int) -> int:
        """1-based line of entry ``index`` in the manifest file."""
        return self.line_numbers[index] if self.line_numbers is not None else index + 2

    def location(self, index: int) -> str:
        """``manifest.tsv:LINE``, for messages about entry ``index``."""
        return f"{self.path}:{self.line_number(index)}"


def read_manifest(path: str, problems: Optional[List[str]] = None) -> Manifest:
    """Parse a manifest, raising ``ValueError`` that names the file and line of any malformed entry.

    With a ``problems`` list, malformed entries are described there instead and
    left out, so that every problem of the file can be reported at once; a
    missing or malformed root line still raises, since no entry can be located
    without it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} does not exist")
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: manifest must start with the root folder of the audio files")
    root = lines[0].strip()
    if "\t" in root:
        raise ValueError(f"{path}:1: expected the root folder, got an entry {root!r}; is the root line missing?")
    files, sizes, line_numbers = [], [], []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip().isdigit():
            message = f"{path}:{line_number}: expected 'relative/path<TAB>num_samples', got {line!r}"
            if problems is None:
                raise ValueError(message)
            problems.append(message)
            continue
        files.append(fields[0])
        sizes.append(int(fields[1]))
        line_numbers.append(line_number)
    consecutive = line_numbers == list(range(2, len(files) + 2))
    return Manifest(path=path, root=root, files=files, sizes=sizes, line_numbers=None if consecutive else line_numbers)

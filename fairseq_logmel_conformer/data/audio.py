"""Reading audio files and fairseq manifests."""
import os
from dataclasses import dataclass
from typing import List

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_EXTENSIONS = ("wav", "flac", "ogg", "mp3")


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
        samples = torchaudio.functional.resample(samples, sample_rate, target_rate)
    return samples


def read_audio(path: str, target_rate: int) -> torch.Tensor:
    """Decode ``path`` with soundfile -> float32 (S,) mono at ``target_rate``, in [-1, 1]."""
    try:
        samples, sample_rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as error:  # soundfile raises several types (LibsndfileError, RuntimeError, TypeError)
        raise AudioReadError(f"cannot read audio file {path}: {error}") from error
    return to_mono_at_rate(torch.from_numpy(samples), sample_rate, target_rate)


def num_samples_at_rate(path: str, target_rate: int) -> int:
    """Length of ``path`` in samples once resampled to ``target_rate`` (header only, no decoding)."""
    try:
        info = sf.info(path)
    except Exception as error:
        raise AudioReadError(f"cannot read audio file {path}: {error}") from error
    return int(np.ceil(info.frames * target_rate / info.samplerate))


@dataclass
class Manifest:
    """A fairseq audio manifest: a root folder, then one ``relative/path<TAB>num_samples`` per line."""

    path: str
    root: str
    files: List[str]
    sizes: List[int]

    def audio_path(self, index: int) -> str:
        return os.path.join(self.root, self.files[index])


def read_manifest(path: str) -> Manifest:
    """Parse a manifest, raising ``ValueError`` that names the file and line of any malformed entry."""
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}:1: manifest must start with the root folder of the audio files")
    root = lines[0].strip()
    if "\t" in root:
        raise ValueError(f"{path}:1: expected the root folder, got an entry {root!r}; is the root line missing?")
    files, sizes = [], []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1].strip().isdigit():
            raise ValueError(f"{path}:{line_number}: expected 'relative/path<TAB>num_samples', got {line!r}")
        files.append(fields[0])
        sizes.append(int(fields[1]))
    return Manifest(path=path, root=root, files=files, sizes=sizes)

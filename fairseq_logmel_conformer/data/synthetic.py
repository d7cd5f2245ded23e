"""Generated sound clips for the demo and the tests: no download needed.

Each class is a family of sounds with random parameters (tones, chirps,
noise bursts, clicks, AM noise), so the clips have structure worth learning and
labels a classifier can recover.
"""
import os
from typing import List, Optional, Sequence

import numpy as np
import soundfile as sf

SOUND_CLASSES = ("tone", "chirp", "noise_burst", "clicks", "tremolo")


def synthesize(sound_class: str, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """One clip of ``sound_class``: float32 (num_samples,) in [-1, 1]."""
    t = np.arange(num_samples) / sample_rate
    if sound_class == "tone":
        f0 = rng.uniform(200, 2000)
        wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 4))
    elif sound_class == "chirp":
        f0, f1 = rng.uniform(100, 1000), rng.uniform(2000, 6000)
        sweep = t[-1] if t[-1] > 0 else 1.0
        wave = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * sweep)))
    elif sound_class == "noise_burst":
        envelope = (np.sin(2 * np.pi * rng.uniform(1, 4) * t) > 0).astype(float)
        wave = rng.standard_normal(num_samples) * envelope
    elif sound_class == "clicks":
        wave = np.zeros(num_samples)
        period = int(sample_rate / rng.uniform(5, 20))
        wave[:: max(period, 1)] = 1.0
        wave = np.convolve(wave, np.exp(-np.arange(200) / 20.0), mode="same")
    elif sound_class == "tremolo":
        wave = rng.standard_normal(num_samples) * (1 + np.sin(2 * np.pi * rng.uniform(3, 12) * t))
    else:
        raise ValueError(f"unknown sound class {sound_class!r}; expected one of {SOUND_CLASSES}")
    wave = wave + 0.01 * rng.standard_normal(num_samples)
    peak = np.abs(wave).max()
    return (0.5 * wave / peak if peak > 0 else wave).astype(np.float32)


def write_dataset(
    folder: str,
    num_clips: int,
    sample_rate: int = 16000,
    seconds: Sequence[float] = (1.0, 3.0),
    classes: Sequence[str] = SOUND_CLASSES,
    seed: int = 0,
    extension: str = "wav",
) -> List[dict]:
    """Write ``num_clips`` clips of random length in ``seconds`` (min, max); return their metadata.

    Each entry has ``path`` (relative to ``folder``), ``label`` and ``num_samples``.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    clips = []
    for index in range(num_clips):
        label = classes[index % len(classes)]
        num_samples = int(rng.uniform(*seconds) * sample_rate)
        relative = f"{label}_{index:04d}.{extension}"
        sf.write(os.path.join(folder, relative), synthesize(label, num_samples, sample_rate, rng), sample_rate)
        clips.append({"path": relative, "label": label, "num_samples": num_samples})
    return clips


def write_label_files(folder: str, clips: List[dict], split: str, classes: Optional[Sequence[str]] = None) -> None:
    """Write ``<split>.tsv`` and ``<split>.labels`` for ``clips`` from :func:`write_dataset`."""
    with open(os.path.join(folder, f"{split}.tsv"), "w") as manifest, open(os.path.join(folder, f"{split}.labels"), "w") as labels:
        print(os.path.abspath(folder), file=manifest)
        for clip in clips:
            print(f"{clip['path']}\t{clip['num_samples']}", file=manifest)
            print(clip["label"], file=labels)
    if classes is not None:
        with open(os.path.join(folder, "labels.txt"), "w") as vocabulary:
            vocabulary.writelines(c + "\n" for c in classes)

"""Inference with pre-trained or fine-tuned checkpoints: frame and clip embeddings, class probabilities.

    from fairseq_logmel_conformer.inference import AudioModel

    model = AudioModel.from_checkpoint("checkpoint_best.pt", device="cpu")
    result = model.embed("dog.wav")                   # or model.embed(array, sample_rate=44100)
    result.frame_embeddings, result.timestamps, result.clip_embedding
    model.predict("dog.wav").top_k(5)                  # fine-tuned (logmel_conformer_classifier) only

Input: a path to any file soundfile decodes, or an array (S,) or (S, C) (channels
last, as soundfile returns it) at any sample rate, read by
:func:`~.data.audio.open_audio`: channels are averaged and the audio is
resampled to the model's rate exactly as the training data loader does.

Timestamps come from the encoder's :class:`~.modules.frontend.StepGeometry`:
the centre of each 80 ms step, 0.03 s + t * 0.08 s at the paper's settings.

Long audio is processed in windows of ``window_seconds`` that overlap by
``overlap_seconds``, read from the file (or array) one window at a time, so
memory does not grow with the length of the recording (only the returned arrays
do; :meth:`AudioModel.iter_embeddings` does not keep them). Every window starts
on the step grid, so its steps are steps of the whole recording, and each step
is taken from the window whose centre is nearest: at least half the overlap
away from the edge of that window. Audio no longer than one window (plus less
than one step) is processed in a single pass, identical to calling the model on
the whole clip.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .checkpoint import load_model
from .data.audio import AudioInput, AudioReader, open_audio, too_short
from .models import LogmelConformerClassifier, encoder_of

WINDOW_POOLING = ("mean", "max")


@dataclass
class Embeddings:
    """Embeddings of one recording.

    ``frame_embeddings`` (T', D) float32, one per latent step; ``timestamps`` (T',)
    float64, the centre of each step in seconds; ``clip_embedding`` (D,) float32,
    the mean of the frame embeddings; ``duration`` in seconds at the model's rate.
    """

    frame_embeddings: np.ndarray
    timestamps: np.ndarray
    clip_embedding: np.ndarray
    duration: float


@dataclass
class Prediction:
    """Class probabilities of one recording from a fine-tuned model.

    ``probabilities`` (C,) in the order of ``class_names``: independent sigmoids
    when ``multilabel``, else a softmax. ``frame_probabilities`` (T', C) and
    ``timestamps`` (T',) are set when frame-level output was asked for.
    """

    class_names: List[str]
    probabilities: np.ndarray
    multilabel: bool
    frame_probabilities: Optional[np.ndarray] = None
    timestamps: Optional[np.ndarray] = None

    def top_k(self, k: int) -> List[Tuple[str, float]]:
        """The ``k`` most probable classes as (name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.class_names[i], float(self.probabilities[i])) for i in order]


@dataclass
class FrameChunk:
    """Consecutive output steps ``first_step .. first_step + len(values) - 1`` of a recording.

    ``values`` (n, X) float32 (embeddings or probabilities), ``timestamps`` (n,) seconds.
    """

    first_step: int
    timestamps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Window:
    """One model pass: samples ``[start_sample, end_sample)`` give global steps ``first_step ..``;
    the steps ``[keep_start, keep_end)`` (global indices) are taken from it."""

    start_sample: int
    end_sample: int
    first_step: int
    keep_start: int
    keep_end: int


def plan_windows(num_samples: int, total_steps: int, samples_per_step: int, window_steps: int, hop_steps: int) -> List[Window]:
    """Cover a recording of ``num_samples`` (``total_steps`` latent steps) with overlapping windows.

    Windows start every ``hop_steps`` steps and span ``window_steps`` steps; the
    last one ends at the end of the recording (so it may start less than a hop
    after the one before). Every step is kept from exactly one window, the one
    whose centre is nearest. A recording shorter than ``window_steps + 1`` steps
    of samples is a single window.
    """
    if not 0 < hop_steps <= window_steps:
        raise ValueError(f"need 0 < hop_steps <= window_steps, got hop_steps={hop_steps}, window_steps={window_steps}")
    if num_samples < (window_steps + 1) * samples_per_step:
        return [Window(0, num_samples, 0, 0, total_steps)]
    last_start = total_steps - window_steps
    starts = list(range(0, last_start, hop_steps)) + [last_start]
    # Steps up to the midpoint of two consecutive window centres belong to the first window.
    cuts = [0] + [(a + b + window_steps) // 2 for a, b in zip(starts, starts[1:])] + [total_steps]
    windows = []
    for index, first_step in enumerate(starts):
        last = index == len(starts) - 1
        end_sample = num_samples if last else (first_step + window_steps) * samples_per_step
        windows.append(Window(first_step * samples_per_step, end_sample, first_step, cuts[index], cuts[index + 1]))
    return windows


class AudioModel:
    """A ``logmel_conformer`` or ``logmel_conformer_classifier`` in eval mode, with windowed inference.

    ``window_seconds`` and ``overlap_seconds`` are rounded to whole 80 ms steps;
    the overlap must be at least two steps (so that no kept step touches a
    window edge) and less than the window. ``batch_size`` windows of equal
    length run through the model together.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: Union[str, torch.device] = "cpu",
        window_seconds: float = 10.0,
        overlap_seconds: float = 2.0,
        batch_size: int = 4,
    ):
        self.encoder = encoder_of(model)
        self.is_classifier = isinstance(model, LogmelConformerClassifier)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.geometry = self.encoder.geometry
        self.sample_rate: int = self.geometry.sample_rate
        step_seconds = self.geometry.step_seconds
        self.window_steps = round(window_seconds / step_seconds)
        overlap_steps = round(overlap_seconds / step_seconds)
        if not 2 <= overlap_steps < self.window_steps:
            raise ValueError(
                f"need 2 steps ({2 * step_seconds:.2f} s) <= overlap < window, got window_seconds={window_seconds} "
                f"({self.window_steps} steps) and overlap_seconds={overlap_seconds} ({overlap_steps} steps)"
            )
        self.hop_steps = self.window_steps - overlap_steps
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        device: Union[str, torch.device] = "cpu",
        arg_overrides: Optional[Dict[str, Any]] = None,
        user_dir: Optional[str] = None,
        **kwargs,
    ) -> "AudioModel":
        """Load a checkpoint of this plugin with fairseq; ``kwargs`` go to :class:`AudioModel`.

        ``arg_overrides`` replaces saved config values by name (fairseq's
        ``arg_overrides``), e.g. ``{"data": folder}`` if the task needs its data;
        ``user_dir`` is the plugin folder of a checkpoint trained with a task of
        the user's own (fairseq's ``--user-dir``). Raises
        :class:`~.checkpoint.CheckpointError` naming the file if it cannot be used.
        """
        model, _, _ = load_model(path, user_dir=user_dir, arg_overrides=arg_overrides)
        return cls(model, device=device, **kwargs)

    @property
    def class_names(self) -> Optional[List[str]]:
        """Class names of a fine-tuned model in output order, None for a pre-trained one."""
        return list(self.model.class_names) if self.is_classifier else None

    @property
    def embedding_dim(self) -> int:
        return self.encoder.embedding_dim

    def _plan(self, reader: AudioReader) -> Tuple[int, List[Window]]:
        reason = too_short(reader.num_samples, self.geometry.min_samples, self.sample_rate)
        if reason:
            raise ValueError(f"audio {reason}")
        total_steps = self.geometry.num_steps(reader.num_samples)
        windows = plan_windows(reader.num_samples, total_steps, self.geometry.samples_per_step, self.window_steps, self.hop_steps)
        return total_steps, windows

    def _batches(self, windows: Sequence[Window]) -> Iterator[List[Window]]:
        """Consecutive windows of equal length, at most ``batch_size`` at a time."""
        batch: List[Window] = []
        for window in windows:
            length = window.end_sample - window.start_sample
            if batch and (len(batch) == self.batch_size or batch[0].end_sample - batch[0].start_sample != length):
                yield batch
                batch = []
            batch.append(window)
        if batch:
            yield batch

    @torch.inference_mode()
    def _run(
        self, reader: AudioReader, windows: Sequence[Window], step_fn: Optional[Callable], window_fn: Optional[Callable]
    ) -> Iterator[Tuple[Window, Optional[np.ndarray], Optional[np.ndarray]]]:
        """Yield (window, its kept steps of ``step_fn``'s (B, T, X) output as (n, X), ``window_fn``'s (B, Y) row)."""
        for batch in self._batches(windows):
            source = np.stack([reader.read(w.start_sample, w.end_sample) for w in batch])
            source = torch.from_numpy(source).to(self.device)
            steps = step_fn(source).float().cpu().numpy() if step_fn is not None else None
            rows = window_fn(source).float().cpu().numpy() if window_fn is not None else None
            for index, window in enumerate(batch):
                kept = None
                if steps is not None:
                    kept = steps[index, window.keep_start - window.first_step : window.keep_end - window.first_step]
                yield window, kept, (rows[index] if rows is not None else None)

    def _embedding_steps(self, source: torch.Tensor) -> torch.Tensor:
        return self.encoder.extract_features(source)[0]

    def iter_embeddings(self, audio: AudioInput, sample_rate: Optional[int] = None) -> Iterator[FrameChunk]:
        """Frame embeddings in time order, one :class:`FrameChunk` per window: memory stays flat for any length."""
        with open_audio(audio, sample_rate, self.sample_rate) as reader:
            _, windows = self._plan(reader)
            for window, kept, _ in self._run(reader, windows, self._embedding_steps, None):
                yield FrameChunk(window.keep_start, self.geometry.timestamps(window.keep_start, len(kept)), kept)

    def embed(self, audio: AudioInput, sample_rate: Optional[int] = None) -> Embeddings:
        """Frame embeddings (T', D), their timestamps (T',) and the clip embedding (D,) of a file or array."""
        with open_audio(audio, sample_rate, self.sample_rate) as reader:
            total_steps, windows = self._plan(reader)
            frames = np.empty((total_steps, self.embedding_dim), dtype=np.float32)
            for window, kept, _ in self._run(reader, windows, self._embedding_steps, None):
                frames[window.keep_start : window.keep_end] = kept
            duration = reader.num_samples / self.sample_rate
        return Embeddings(
            frame_embeddings=frames,
            timestamps=self.geometry.timestamps(0, total_steps),
            clip_embedding=frames.mean(0, dtype=np.float64).astype(np.float32),
            duration=duration,
        )

    def predict(
        self, audio: AudioInput, sample_rate: Optional[int] = None, frame_level: bool = False, window_pooling: str = "mean"
    ) -> Prediction:
        """Class probabilities of a file or array (fine-tuned models only).

        A recording of one window gets the model's own clip prediction. Longer
        ones get the windows' predictions pooled: ``mean`` weighs each window by
        the steps it contributes, ``max`` takes each class's highest window
        probability (for tagging: "present anywhere"). ``frame_level`` adds the
        stitched per-step probabilities (T', C) and their timestamps.
        """
        if not self.is_classifier:
            raise ValueError(f"predict needs a fine-tuned logmel_conformer_classifier, this checkpoint holds {type(self.model).__name__}")
        if window_pooling not in WINDOW_POOLING:
            raise ValueError(f"window_pooling must be one of {WINDOW_POOLING}, got {window_pooling!r}")
        num_classes = len(self.model.class_names)
        step_fn = (lambda source: self.model.frame_probabilities(source)[0]) if frame_level else None
        pooled = np.zeros(num_classes, dtype=np.float64) if window_pooling == "mean" else np.full(num_classes, -np.inf)
        with open_audio(audio, sample_rate, self.sample_rate) as reader:
            total_steps, windows = self._plan(reader)
            frames = np.empty((total_steps, num_classes), dtype=np.float32) if frame_level else None
            for window, kept, clip in self._run(reader, windows, step_fn, self.model.predict):
                if frames is not None:
                    frames[window.keep_start : window.keep_end] = kept
                if window_pooling == "mean":
                    pooled += clip * (window.keep_end - window.keep_start) / total_steps
                else:
                    pooled = np.maximum(pooled, clip)
        return Prediction(
            class_names=self.class_names,
            probabilities=pooled.astype(np.float32),
            multilabel=bool(self.model.multilabel),
            frame_probabilities=frames,
            timestamps=self.geometry.timestamps(0, total_steps) if frame_level else None,
        )

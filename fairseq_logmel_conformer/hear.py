"""The HEAR benchmark API (https://hearbenchmark.com/hear-api.html) for checkpoints of this plugin.

    from fairseq_logmel_conformer import hear

    model = hear.load_model("checkpoint_best.pt")
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)  # audio: (n_sounds, n_samples) float32, 16 kHz
    scene = hear.get_scene_embeddings(audio, model)

The module name for HEAR tools is ``fairseq_logmel_conformer.hear``, e.g.
``hear-validator fairseq_logmel_conformer.hear -m checkpoint_best.pt``.

- ``load_model`` needs a checkpoint path (a ``logmel_conformer`` pre-training or
  ``logmel_conformer_classifier`` fine-tuning checkpoint): the plugin ships no
  weights, so ``load_model()`` raises ValueError. A fine-tuned checkpoint gives
  its encoder's embeddings, the ones its classification head reads.
- Timestamp embeddings: one per latent step (80 ms at the paper's settings),
  (n_sounds, n_timestamps, D) with timestamps in milliseconds at the centre of
  each step's span, 30 + 80 t ms (the encoder's ``geometry``).
  HEAR suggests at most 50 ms between timestamps; hear-validator warns about the 80 ms.
- Scene embeddings: (n_sounds, D), the mean of the timestamp embeddings, the
  clip embedding the paper fine-tunes on.
- Sounds shorter than one step (960 samples, 60 ms, at 16 kHz) raise ValueError.
"""
from typing import Tuple

import torch
import torch.nn as nn

from .checkpoint import load_model as load_checkpoint
from .data.audio import too_short
from .models import LogmelConformerModel, encoder_of


class HearModel(nn.Module):
    """An encoder with the attributes HEAR requires: ``sample_rate``, ``scene_embedding_size``, ``timestamp_embedding_size``.

    ``forward``: audio (n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, D)
    float32 and timestamps (n_sounds, n_timestamps) float32 in milliseconds, on the
    model's device.
    """

    def __init__(self, encoder: LogmelConformerModel):
        super().__init__()
        self.encoder = encoder.eval()
        self.geometry = encoder.geometry
        self.sample_rate = self.geometry.sample_rate
        self.scene_embedding_size = encoder.embedding_dim
        self.timestamp_embedding_size = encoder.embedding_dim

    @torch.no_grad()
    def forward(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, D), timestamps (n_sounds, n_timestamps) in ms."""
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (n_sounds, n_samples), got shape {tuple(audio.shape)}")
        reason = too_short(audio.shape[1], self.geometry.min_samples, self.sample_rate)
        if reason:
            raise ValueError(f"sounds {reason}")
        device = next(self.encoder.parameters()).device
        embeddings, _ = self.encoder.extract_features(audio.to(device=device, dtype=torch.float32))
        seconds = torch.from_numpy(self.geometry.timestamps(0, embeddings.shape[1]))
        timestamps = (seconds * 1000.0).to(device=device, dtype=torch.float32)
        return embeddings.float(), timestamps.expand(audio.shape[0], -1).contiguous()


def load_model(model_file_path: str = "") -> HearModel:
    """Load a checkpoint of this plugin on CPU, in eval mode (HEAR moves it to its device)."""
    if not model_file_path:
        raise ValueError(
            "fairseq_logmel_conformer.hear has no built-in weights: pass the path of a logmel_conformer "
            "pre-training or logmel_conformer_classifier fine-tuning checkpoint"
        )
    model, _, _ = load_checkpoint(model_file_path)
    return HearModel(encoder_of(model))


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> Tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_timestamps, D), timestamps (n_sounds, n_timestamps) in ms."""
    return model(audio)


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D), the mean of each sound's timestamp embeddings."""
    embeddings, _ = model(audio)
    return embeddings.mean(1)

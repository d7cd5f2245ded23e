"""Export of the encoder, log-mel frontend included, to TorchScript and ONNX.

Both formats take the raw waveform at the model's sample rate, so a deployment
needs no separate feature extraction:

- TorchScript (``torch.jit.script``, not a trace): ``forward(waveform (B, S),
  lengths (B,) or None) -> (embeddings (B, T', D), padding_mask (B, T'))``.
  Any batch size and length; ``lengths`` (valid samples per clip) marks
  zero-padded clips in a batch, exactly as ``extract_features`` does.
- ONNX (``torch.onnx.export`` with the dynamo exporter, opset 18 by default:
  the exporter's own opset; later ones are converted to, earlier ones fail
  with torch 2.9, the converter having no opset-17 adapter for ``Pad``):
  input ``waveform`` (B, S), outputs ``embeddings`` (B, T', D) and
  ``padding_mask`` (B, T'); batch size and length are dynamic. There is no
  ``lengths`` input: with lengths, the encoder decides on the data whether
  attention needs a padding mask (``attention_padding``), which torch.export
  cannot trace. Every clip of an ONNX batch is taken as valid over its full
  length, so run clips of different lengths one at a time (or use
  TorchScript); ``padding_mask`` is then all False.

Embedding ``t`` is centred at ``first_timestamp + t * step_seconds`` seconds
(the encoder's :class:`~.modules.frontend.StepGeometry`); both values, and
``sample_rate``, are attributes of the TorchScript module and metadata of the
ONNX model.
"""
import importlib.util
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .checkpoint import load_model
from .models import LogmelConformerModel, encoder_of
from .modules.frontend import lengths_to_padding_mask

ONNX_OPSET = 18
ONNX_INPUT_NAMES = ["waveform"]
ONNX_OUTPUT_NAMES = ["embeddings", "padding_mask"]


class OnnxExportError(RuntimeError):
    """torch.onnx.export could not convert the encoder."""


class FrameEmbedder(nn.Module):
    """An encoder (moved to CPU) as one scriptable module, with its step geometry as attributes.

    ``forward``: waveform (B, S) at ``sample_rate``, optional (B,) valid sample
    counts -> frame embeddings (B, T', D) and their padding mask (B, T'), True at
    padding (all False without ``lengths``). For a fine-tuned classifier's
    encoder the embeddings are those its head reads, before the head.
    """

    def __init__(self, encoder: LogmelConformerModel):
        super().__init__()
        self.encoder = encoder.cpu()
        geometry = encoder.geometry
        self.sample_rate: int = geometry.sample_rate
        self.embedding_dim: int = encoder.embedding_dim
        self.first_timestamp: float = geometry.first_timestamp
        self.step_seconds: float = geometry.step_seconds

    def forward(self, waveform: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, S) waveform, (B,) sample counts or None -> (B, T', D) embeddings, (B, T') bool padding mask."""
        padding_mask = None if lengths is None else lengths_to_padding_mask(lengths, waveform.shape[1])
        features, step_padding = self.encoder.extract_features(waveform, padding_mask)
        if step_padding is None:
            step_padding = torch.zeros(features.shape[:2], dtype=torch.bool, device=features.device)
        return features, step_padding

    def metadata(self) -> dict:
        """What a user of an exported model needs to feed it and place its outputs in time."""
        return {
            "sample_rate": self.sample_rate,
            "embedding_dim": self.embedding_dim,
            "first_timestamp": self.first_timestamp,
            "step_seconds": self.step_seconds,
        }


def load_embedder(checkpoint_path: str, user_dir: Optional[str] = None) -> FrameEmbedder:
    """The encoder of a ``logmel_conformer`` or ``logmel_conformer_classifier`` checkpoint, on CPU, in eval mode."""
    model, _, _ = load_model(checkpoint_path, user_dir=user_dir)
    return FrameEmbedder(encoder_of(model)).eval()


def export_torchscript(embedder: FrameEmbedder, path: str) -> torch.jit.ScriptModule:
    """Script ``embedder`` (in eval mode) and save it to ``path``; returns the scripted module."""
    scripted = torch.jit.script(embedder.eval())
    scripted.save(path)
    return scripted


def export_onnx(embedder: FrameEmbedder, path: str, opset: int = ONNX_OPSET) -> None:
    """Export ``embedder`` (in eval mode, without ``lengths``) to ``path`` with dynamic batch size and length.

    Raises ImportError without the ``onnx`` and ``onnxscript`` packages and
    :class:`OnnxExportError`, naming the opset and torch version, if the exporter fails.
    """
    # The dynamo exporter imports onnxscript lazily, deep inside; fail early with the fix.
    if importlib.util.find_spec("onnxscript") is None:
        raise ImportError("ONNX export needs the onnx and onnxscript packages: pip install onnx onnxscript")
    embedder.eval()
    example = torch.randn(2, 2 * embedder.sample_rate, generator=torch.Generator().manual_seed(0))
    # Dim.AUTO, not named Dims: tracing adds a "batch != 1" guard (a reshape's stride choice) that named
    # Dims turn into an error. The ONNX graph carries no such guard and runs batch 1 too (tests check it).
    dynamic = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
    try:
        program = torch.onnx.export(
            embedder,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=ONNX_INPUT_NAMES,
            output_names=ONNX_OUTPUT_NAMES,
            dynamic_shapes=(dynamic,),
            verbose=False,
        )
    except Exception as error:  # the exporter raises many types; callers get one, with the cause chained
        raise OnnxExportError(
            f"torch.onnx.export (dynamo exporter, opset {opset}, torch {torch.__version__}) failed on "
            f"{type(embedder.encoder).__name__}: {type(error).__name__}: {error}"
        ) from error
    produced = program.model.opset_imports.get("")
    if produced != opset:
        # The exporter writes opset 18 and converts; a failed conversion (e.g. to 17: no adapter for Pad)
        # only logs a warning and keeps opset 18.
        raise OnnxExportError(
            f"torch.onnx.export (torch {torch.__version__}) produced opset {produced}, not the opset {opset} asked for: "
            f"the ONNX version converter could not convert the graph (see its warning above); use opset {produced} or later"
        )
    program.model.metadata_props.update({key: str(value) for key, value in embedder.metadata().items()})
    program.save(path, external_data=False)


def onnx_runner(path: str) -> Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]:
    """A function running the ONNX model at ``path`` with onnxruntime on CPU: (B, S) -> (embeddings, padding_mask)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(waveform: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        embeddings, padding = session.run(ONNX_OUTPUT_NAMES, {ONNX_INPUT_NAMES[0]: waveform.detach().cpu().float().numpy()})
        return torch.from_numpy(embeddings), torch.from_numpy(padding)

    return run


@torch.no_grad()
def max_abs_difference(
    embedder: FrameEmbedder, exported: Callable[[torch.Tensor], Tuple[torch.Tensor, torch.Tensor]], num_samples: Sequence[int], batch_size: int = 2
) -> float:
    """Largest |exported - eager| embedding difference over random waveforms of each length in ``num_samples``.

    Raises ValueError if the exported model gives other shapes or padding masks than the eager one.
    """
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for length in num_samples:
        waveform = 0.1 * torch.randn(batch_size, length, generator=generator)
        expected, expected_padding = embedder(waveform)
        actual, padding = exported(waveform)
        if actual.shape != expected.shape or not torch.equal(padding, expected_padding):
            raise ValueError(
                f"exported model gave embeddings {tuple(actual.shape)} for a ({batch_size}, {length}) waveform, "
                f"expected {tuple(expected.shape)} (or the padding masks differ)"
            )
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


def parity_lengths(sample_rate: int) -> List[int]:
    """Waveform lengths the export is checked on: 1 s, an odd 2.37 s, and 10 s (the paper's clip length)."""
    return [sample_rate, round(2.37 * sample_rate), 10 * sample_rate]

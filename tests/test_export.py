"""TorchScript and ONNX export of the encoder with its log-mel frontend: parity with the eager model, CLI, errors."""
import importlib.util
import os

import numpy as np
import pytest
import torch

from fairseq_logmel_conformer.cli.export import main as export_main
from fairseq_logmel_conformer.data.synthetic import synthesize
from fairseq_logmel_conformer.export import FrameEmbedder, OnnxExportError, export_onnx, load_embedder
from fairseq_logmel_conformer.models import encoder_of
from fairseq_logmel_conformer.models.logmel_conformer_classifier import LogmelConformerClassifier, LogmelConformerClassifierConfig

SAMPLE_RATE = 16000
ATOL = 1e-4


@pytest.fixture(scope="module")
def embedder(pretrained_checkpoint):
    return load_embedder(pretrained_checkpoint)


@pytest.fixture(scope="module")
def exported(pretrained_checkpoint, tmp_path_factory):
    """(TorchScript path, ONNX path or None without onnxscript/onnxruntime, exit status) of one ``logmel-export`` run."""
    folder = tmp_path_factory.mktemp("export")
    script_path, onnx_path = str(folder / "encoder.pt"), str(folder / "encoder.onnx")
    args = [pretrained_checkpoint, "--torchscript", script_path]
    has_onnx = all(importlib.util.find_spec(name) for name in ("onnxscript", "onnxruntime"))
    if has_onnx:
        args += ["--onnx", onnx_path]
    status = export_main(args)
    return script_path, (onnx_path if has_onnx else None), status


def real_audio(seconds: float, sound_class: str = "chirp") -> torch.Tensor:
    """(1, S) generated clip: structured sound rather than white noise."""
    clip = synthesize(sound_class, int(seconds * SAMPLE_RATE), SAMPLE_RATE, np.random.default_rng(0))
    return torch.from_numpy(clip)[None]


def parity_inputs():
    """(name, waveform): random batches of two lengths and batch sizes, and a real-length 10 s clip with batch size 1."""
    generator = torch.Generator().manual_seed(1)
    return [
        ("random 1 s", 0.1 * torch.randn(2, SAMPLE_RATE, generator=generator)),
        ("random 2.37 s", 0.1 * torch.randn(3, 37920, generator=generator)),
        ("10 s chirp", real_audio(10.0)),
    ]


def test_cli_exports_and_checks_parity(exported):
    script_path, onnx_path, status = exported
    assert status == 0
    assert os.path.getsize(script_path) > 0
    assert onnx_path is None or os.path.getsize(onnx_path) > 0


def test_cli_requires_an_output(pretrained_checkpoint):
    with pytest.raises(SystemExit):
        export_main([pretrained_checkpoint])


@torch.no_grad()
def test_torchscript_matches_eager_for_any_length(exported, embedder):
    scripted = torch.jit.load(exported[0])
    for name, waveform in parity_inputs():
        expected, expected_padding = embedder.encoder.extract_features(waveform)
        actual, padding = scripted(waveform)
        assert actual.shape == expected.shape == (waveform.shape[0], (1 + waveform.shape[1] // 320) // 4, 64), name
        assert expected_padding is None and not padding.any(), name
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=name)


@torch.no_grad()
def test_torchscript_handles_padded_batches_like_extract_features(exported, embedder):
    scripted = torch.jit.load(exported[0])
    waveform = 0.1 * torch.randn(3, 2 * SAMPLE_RATE, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([2 * SAMPLE_RATE, 24000, 9000])
    waveform[1, 24000:] = 0
    waveform[2, 9000:] = 0
    sample_padding = torch.arange(waveform.shape[1])[None] >= lengths[:, None]
    expected, expected_padding = embedder.encoder.extract_features(waveform, sample_padding)
    actual, padding = scripted(waveform, lengths)
    assert torch.equal(padding, expected_padding)
    assert padding.sum(1).tolist() == [0, 25 - 19, 25 - 7]
    valid = ~padding[..., None]
    torch.testing.assert_close(actual * valid, expected * valid, atol=ATOL, rtol=0)
    # A padded clip gives what it gives alone: the padding mask reaches the attention.
    alone, _ = scripted(waveform[2:, :9000])
    torch.testing.assert_close(actual[2, :7], alone[0], atol=ATOL, rtol=0)


def test_torchscript_module_carries_its_timing(exported, embedder):
    scripted = torch.jit.load(exported[0])
    assert scripted.sample_rate == SAMPLE_RATE
    assert scripted.embedding_dim == 64
    assert scripted.step_seconds == pytest.approx(0.08)
    assert scripted.first_timestamp == pytest.approx(0.03)


@torch.no_grad()
def test_onnx_matches_eager_for_other_lengths_and_batch_sizes(exported, embedder):
    onnx_path = exported[1]
    if onnx_path is None:
        pytest.skip("onnxscript or onnxruntime is not installed")
    import onnx

    from fairseq_logmel_conformer.export import onnx_runner

    run = onnx_runner(onnx_path)
    # The export example is (2, 2 s); every input here differs from it in length or batch size.
    for name, waveform in parity_inputs():
        expected, _ = embedder.encoder.extract_features(waveform)
        actual, padding = run(waveform)
        assert actual.shape == expected.shape, name
        assert padding.dtype == torch.bool and not padding.any(), name
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0, msg=name)
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    assert metadata["sample_rate"] == str(SAMPLE_RATE) and float(metadata["step_seconds"]) == pytest.approx(0.08)


def test_onnx_exporter_failure_names_the_opset(embedder, tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")

    def failing_export(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::example")

    monkeypatch.setattr(torch.onnx, "export", failing_export)
    with pytest.raises(OnnxExportError, match=r"opset 17.*unsupported operator aten::example"):
        export_onnx(embedder, str(tmp_path / "x.onnx"), opset=17)


@torch.no_grad()
def test_a_fine_tuned_classifier_exports_its_encoder(embedder):
    encoder_cfg = dict(embedder.encoder.cfg)
    cfg = LogmelConformerClassifierConfig(encoder=encoder_cfg, sample_rate=SAMPLE_RATE, class_names=["a", "b", "c"])
    classifier = LogmelConformerClassifier(cfg)
    classifier.load_encoder_weights(embedder.encoder.state_dict())
    classifier_embedder = FrameEmbedder(encoder_of(classifier)).eval()
    assert classifier_embedder.encoder is classifier.encoder
    scripted = torch.jit.script(classifier_embedder)
    waveform = real_audio(1.5, "tone")
    expected, _ = classifier.eval().frame_embeddings(waveform)
    torch.testing.assert_close(scripted(waveform)[0], expected, atol=ATOL, rtol=0)

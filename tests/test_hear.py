"""The HEAR API module: the published hear-validator where it installs, the API's specification, timestamps."""
import importlib
import sys
import types

import numpy as np
import pytest
import torch

from fairseq_logmel_conformer import hear
from fairseq_logmel_conformer.data.synthetic import synthesize
from fairseq_logmel_conformer.models import encoder_of
from fairseq_logmel_conformer.models.logmel_conformer import masked_mean
from fairseq_logmel_conformer.models.logmel_conformer_classifier import LogmelConformerClassifier, LogmelConformerClassifierConfig

SAMPLE_RATE = 16000
HOP = 320


@pytest.fixture(scope="module")
def model(pretrained_checkpoint):
    return hear.load_model(pretrained_checkpoint)


def clips(num_samples: int) -> torch.Tensor:
    """(3, num_samples) float32 generated sounds of three classes."""
    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([synthesize(c, num_samples, SAMPLE_RATE, rng) for c in ("tone", "chirp", "clicks")]))


def test_published_hear_validator_accepts_the_module(pretrained_checkpoint, monkeypatch):
    pytest.importorskip("hearvalidator")
    # hearvalidator imports tensorflow at the top but only uses it for TensorFlow models; a stand-in
    # whose Module no torch model is an instance of keeps its PyTorch checks intact without a 500 MB install.
    if importlib.util.find_spec("tensorflow") is None:
        stand_in = types.ModuleType("tensorflow")
        stand_in.Module = type("Module", (), {})
        monkeypatch.setitem(sys.modules, "tensorflow", stand_in)
    monkeypatch.delitem(sys.modules, "hearvalidator.validate", raising=False)
    validate = importlib.import_module("hearvalidator.validate")
    try:
        # The validator's only complaint: 80 ms between timestamps, where HEAR suggests at most 50 ms.
        with pytest.warns(UserWarning, match="less than or equal to 50ms"):
            validate.ValidateModel("fairseq_logmel_conformer.hear", pretrained_checkpoint, device="cpu")()
    finally:
        sys.modules.pop("hearvalidator.validate", None)


def test_model_has_the_required_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == SAMPLE_RATE
    assert type(model.scene_embedding_size) is int and type(model.timestamp_embedding_size) is int
    assert model.scene_embedding_size == model.timestamp_embedding_size == 64


def test_load_model_requires_a_checkpoint():
    with pytest.raises(ValueError, match="no built-in weights"):
        hear.load_model()


def test_timestamp_embeddings_follow_the_spec(model):
    audio = clips(37000)
    embeddings, timestamps = hear.get_timestamp_embeddings(audio, model)
    steps = (1 + 37000 // HOP) // 4
    assert embeddings.shape == (3, steps, model.timestamp_embedding_size) and embeddings.dtype == torch.float32
    assert timestamps.shape == (3, steps) and timestamps.dtype == torch.float32
    # Milliseconds, centre of each 80 ms step: frames 4t .. 4t+3 are centred at (4t + 1.5) * 20 ms on average.
    torch.testing.assert_close(timestamps, (30.0 + 80.0 * torch.arange(steps, dtype=torch.float32)).expand(3, -1))
    assert float(timestamps[0, -1]) < 37000 / SAMPLE_RATE * 1000
    expected, _ = model.encoder.extract_features(audio)
    torch.testing.assert_close(embeddings, expected)


def test_scene_embeddings_are_the_clip_embeddings(model):
    audio = clips(24000)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.shape == (3, model.scene_embedding_size) and scene.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(scene, masked_mean(*model.encoder.extract_features(audio)))
    assert not torch.allclose(scene[0], scene[1]), "different sounds should not share a scene embedding"


def test_each_sound_is_embedded_independently_of_its_batch(model):
    audio = clips(20000)
    together = hear.get_scene_embeddings(audio, model)
    alone = torch.cat([hear.get_scene_embeddings(audio[i : i + 1], model) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_bad_audio_is_rejected_with_its_shape(model):
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\), got shape \(16000,\)"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
    with pytest.raises(ValueError, match="sounds too short: 959 samples .* the minimum is 960"):
        hear.get_timestamp_embeddings(torch.zeros(2, 959), model)
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.zeros(2, 960), model)
    assert embeddings.shape == (2, 1, 64) and timestamps.tolist() == [[30.0], [30.0]]


@torch.no_grad()
def test_timestamps_point_at_the_audio_that_made_the_step(model):
    """An impulse changes the latent steps (before the conformer mixes time) whose span holds it,
    and the step whose timestamp is nearest the impulse is one of them."""
    encoder = model.encoder
    num_samples = 3 * SAMPLE_RATE
    silence = torch.zeros(1, num_samples)
    reference, _ = encoder.latents(*encoder.logmel(silence))
    timestamps = hear.get_timestamp_embeddings(silence, model)[1][0]
    # Half a step plus half a window: the farthest a sample can be from the centre of a step that sees it.
    reach_ms = (1.5 * HOP + encoder.frontend.win_length / 2) / SAMPLE_RATE * 1000
    for position in (5000, 16000, 16123, 40000):
        impulse = silence.clone()
        impulse[0, position] = 1.0
        latents, _ = encoder.latents(*encoder.logmel(impulse))
        changed = ((latents - reference).abs().amax(-1)[0] > 1e-4).nonzero()[:, 0]
        position_ms = position / SAMPLE_RATE * 1000
        assert len(changed) > 0
        assert (timestamps[changed] - position_ms).abs().max() <= reach_ms, position
        assert int((timestamps - position_ms).abs().argmin()) in changed.tolist(), position


def test_logmel_frame_k_is_centred_at_k_hops(model):
    """The timestamp formula rests on frame k of the centred STFT being centred at sample k * hop."""
    frontend = model.encoder.frontend
    for frame in (3, 10, 41):
        impulse = torch.zeros(1, SAMPLE_RATE)
        impulse[0, frame * HOP] = 1.0
        logmel, _ = frontend(impulse)
        assert int(logmel[0].sum(-1).argmax()) == frame


@torch.no_grad()
def test_a_fine_tuned_classifier_gives_its_encoder_embeddings(model):
    cfg = LogmelConformerClassifierConfig(encoder=dict(model.encoder.cfg), sample_rate=SAMPLE_RATE, class_names=["a", "b"])
    classifier = LogmelConformerClassifier(cfg)
    classifier.load_encoder_weights(model.encoder.state_dict())
    classifier.eval()
    classifier_model = hear.HearModel(encoder_of(classifier))
    assert classifier_model.encoder is classifier.encoder
    assert classifier_model.timestamp_embedding_size == 64
    audio = clips(16000)
    embeddings, _ = hear.get_timestamp_embeddings(audio, classifier_model)
    expected, _ = classifier.frame_embeddings(audio)
    torch.testing.assert_close(embeddings, expected)

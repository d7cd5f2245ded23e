"""The inference API: embeddings, timestamps, resampling, windowed long-audio inference, class probabilities."""
import os
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from fairseq_logmel_conformer.data.audio import open_audio, read_audio, to_mono_at_rate
from fairseq_logmel_conformer.data.synthetic import synthesize
from fairseq_logmel_conformer.inference import AudioModel, plan_windows
from fairseq_logmel_conformer.models.logmel_conformer import masked_mean

RATE = 16000


@pytest.fixture(scope="module")
def model(pretrained_checkpoint):
    return AudioModel.from_checkpoint(pretrained_checkpoint)


def single_pass(model, samples):
    """Reference: the encoder on the whole clip at once -> (T', D)."""
    with torch.inference_mode():
        return model.encoder.extract_features(torch.from_numpy(samples)[None])[0][0].numpy()


def clip(sound_class, seconds, seed=0):
    return synthesize(sound_class, int(seconds * RATE), RATE, np.random.default_rng(seed))


@pytest.mark.parametrize("num_samples", [3 * 1280 + 5, 126 * 1280, 126 * 1280 + 959, 1000 * 1280 + 321, 10 ** 7])
def test_windows_keep_every_step_once_away_from_window_edges(num_samples):
    window_steps, hop_steps, samples_per_step = 125, 100, 1280
    total_steps = (1 + num_samples // 320) // 4
    windows = plan_windows(num_samples, total_steps, samples_per_step, window_steps, hop_steps)
    kept = np.concatenate([np.arange(w.keep_start, w.keep_end) for w in windows])
    np.testing.assert_array_equal(kept, np.arange(total_steps))
    assert windows[-1].end_sample == num_samples
    for index, window in enumerate(windows):
        assert window.start_sample == window.first_step * samples_per_step
        window_steps_here = (1 + (window.end_sample - window.start_sample) // 320) // 4
        assert window.first_step <= window.keep_start < window.keep_end <= window.first_step + window_steps_here
        assert window.end_sample - window.start_sample < (window_steps + 1) * samples_per_step + 320
        # Half the overlap (12 steps) separates each kept step from an edge that is not the recording's.
        if index > 0:
            assert window.keep_start - window.first_step >= (window_steps - hop_steps) // 2
        if index < len(windows) - 1:
            assert window.first_step + window_steps_here - window.keep_end >= (window_steps - hop_steps) // 2


@pytest.mark.parametrize("rate,channels", [(44100, 2), (8000, 1), (22050, 3)])
def test_reader_ranges_equal_resampling_the_whole_file(tmp_path, rate, channels):
    samples = np.random.default_rng(rate).uniform(-0.5, 0.5, (3 * rate + 17, channels)).astype(np.float32)
    path = str(tmp_path / "x.wav")
    sf.write(path, samples, rate, subtype="FLOAT")
    whole = read_audio(path, RATE).numpy()
    with open_audio(path, None, RATE) as reader:
        assert reader.num_samples == len(whole)
        for start, end in [(0, 1000), (4321, 20000), (len(whole) - 7000, len(whole)), (0, len(whole))]:
            np.testing.assert_allclose(reader.read(start, end), whole[start:end], atol=1e-5)


def test_embed_shapes_timestamps_and_single_pass(model, tmp_path):
    samples = clip("chirp", 2.5)
    path = str(tmp_path / "chirp.wav")
    sf.write(path, samples, RATE, subtype="FLOAT")
    result = model.embed(path)
    steps = (1 + len(samples) // 320) // 4
    assert result.frame_embeddings.shape == (steps, model.embedding_dim) and result.frame_embeddings.dtype == np.float32
    # Step t stacks frames 4t .. 4t+3, centred at 4t*hop .. (4t+3)*hop: its centre is (4t + 1.5) * 20 ms.
    np.testing.assert_allclose(result.timestamps, (4 * np.arange(steps) + 1.5) * 0.02)
    assert result.duration == pytest.approx(2.5)
    np.testing.assert_allclose(result.frame_embeddings, single_pass(model, samples), atol=1e-5)
    with torch.inference_mode():
        reference_clip = masked_mean(*model.encoder.extract_features(torch.from_numpy(samples)[None]))[0].numpy()
    np.testing.assert_allclose(result.clip_embedding, reference_clip, atol=1e-5)


def test_array_at_44k_stereo_equals_file_input(model, tmp_path):
    rng = np.random.default_rng(1)
    stereo = np.stack([clip("tremolo", 3.0, seed=1), clip("tone", 3.0, seed=2)], 1)
    stereo_44k = to_mono_at_rate(torch.from_numpy(stereo), RATE, 44100).numpy()[:, None] * np.array([[1.0, 0.5]], np.float32)
    stereo_44k += 0.01 * rng.standard_normal(stereo_44k.shape).astype(np.float32)
    path = str(tmp_path / "stereo.wav")
    sf.write(path, stereo_44k, 44100, subtype="FLOAT")
    from_file = model.embed(path)
    from_array = model.embed(stereo_44k, sample_rate=44100)
    from_tensor = model.embed(torch.from_numpy(stereo_44k), sample_rate=44100)
    resampled = model.embed(read_audio(path, RATE).numpy(), sample_rate=RATE)
    np.testing.assert_allclose(from_array.frame_embeddings, from_file.frame_embeddings, atol=1e-6)
    np.testing.assert_allclose(from_tensor.frame_embeddings, from_file.frame_embeddings, atol=1e-6)
    np.testing.assert_allclose(resampled.frame_embeddings, from_file.frame_embeddings, atol=1e-4)
    np.testing.assert_array_equal(from_array.timestamps, from_file.timestamps)


def test_integer_pcm_array_is_scaled_like_the_file(model):
    samples = clip("clicks", 1.5)
    pcm = np.round(samples * 32767).astype(np.int16)
    np.testing.assert_allclose(
        model.embed(pcm, RATE).frame_embeddings, model.embed(pcm / 32768.0, RATE).frame_embeddings, atol=1e-5
    )


@pytest.mark.parametrize("seconds", [6.0, 10.07])
def test_audio_within_one_window_is_a_single_pass(pretrained_checkpoint, seconds):
    model = AudioModel.from_checkpoint(pretrained_checkpoint, window_seconds=10.0, overlap_seconds=2.0)
    samples = clip("noise_burst", seconds)
    np.testing.assert_allclose(model.embed(samples, RATE).frame_embeddings, single_pass(model, samples), atol=1e-5)


def test_long_clip_is_stitched_from_windows(pretrained_checkpoint):
    model = AudioModel.from_checkpoint(pretrained_checkpoint, window_seconds=5.0, overlap_seconds=2.0, batch_size=3)
    samples = clip("tremolo", 30.0)
    result = model.embed(samples, RATE)
    reference = single_pass(model, samples)
    assert result.frame_embeddings.shape == reference.shape
    assert np.all(np.diff(result.timestamps) > 0)
    np.testing.assert_allclose(np.diff(result.timestamps), 0.08)
    np.testing.assert_allclose(result.timestamps[[0, -1]], [0.03, 0.03 + 0.08 * (len(reference) - 1)])
    # float32 sums over hundreds of frames round differently in each order: agree to float32 precision.
    np.testing.assert_allclose(result.clip_embedding, result.frame_embeddings.mean(0), rtol=1e-5, atol=1e-6)
    # Each step is exactly the model's output for its window at the matching position.
    windows = plan_windows(len(samples), len(reference), model.geometry.samples_per_step, model.window_steps, model.hop_steps)
    assert len(windows) > 5
    for window in windows:
        local = single_pass(model, samples[window.start_sample : window.end_sample])
        offset = window.first_step
        np.testing.assert_allclose(
            result.frame_embeddings[window.keep_start : window.keep_end], local[window.keep_start - offset : window.keep_end - offset], atol=1e-5
        )
    # Attention spans the whole input, so windows differ from one pass only through the context they
    # see; on stationary sound that context is alike and the stitched frames match closely.
    cosine = (result.frame_embeddings * reference).sum(1) / np.linalg.norm(result.frame_embeddings, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.98
    relative = np.linalg.norm(result.frame_embeddings - reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert relative.max() < 0.2
    chunks = list(model.iter_embeddings(samples, RATE))
    assert len(chunks) == len(windows)
    np.testing.assert_array_equal(np.concatenate([c.values for c in chunks]), result.frame_embeddings)
    np.testing.assert_array_equal(np.concatenate([c.timestamps for c in chunks]), result.timestamps)


def test_one_hour_file_is_processed_in_bounded_windows(model, tmp_path, monkeypatch):
    path = str(tmp_path / "hour.wav")
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=RATE, channels=1, subtype="PCM_16") as f:
        for _ in range(60):
            f.write((0.1 * rng.standard_normal(60 * RATE)).astype(np.float32))
    inputs = []
    forward = model._embedding_steps

    def spy(source):
        inputs.append(tuple(source.shape))
        return forward(source)

    monkeypatch.setattr(model, "_embedding_steps", spy)
    tracemalloc.start()
    try:
        result = model.embed(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.frame_embeddings.shape == (45000, model.embedding_dim)
    assert result.timestamps[-1] == pytest.approx(0.03 + 44999 * 0.08)
    assert result.duration == pytest.approx(3600.0)
    assert max(shape[1] for shape in inputs) <= (model.window_steps + 1) * model.geometry.samples_per_step + 320
    assert max(shape[0] for shape in inputs) <= model.batch_size
    # The decoded hour is 230 MB of float32; only a batch of windows (plus the result) is ever held.
    held = result.frame_embeddings.nbytes + result.timestamps.nbytes
    assert peak - held < 32 * 2 ** 20, f"traced peak {peak / 2 ** 20:.1f} MB, result {held / 2 ** 20:.1f} MB"


def test_invalid_inputs_are_rejected(model, tmp_path):
    with pytest.raises(ValueError, match=r"audio too short: 959 samples \(0.060 s\) at 16000 Hz, the minimum is 960 \(0.060 s\)"):
        model.embed(np.zeros(959, np.float32), RATE)
    with pytest.raises(ValueError, match="sample_rate is required"):
        model.embed(np.zeros(RATE, np.float32))
    with pytest.raises(ValueError, match=r"\(2, 16000\).*transpose"):
        model.embed(np.zeros((2, RATE), np.float32), RATE)
    with pytest.raises(ValueError, match="dtype uint8"):
        model.embed(np.zeros(RATE, np.uint8), RATE)
    path = str(tmp_path / "a.wav")
    sf.write(path, np.zeros(RATE, np.float32), RATE)
    with pytest.raises(ValueError, match="file's own rate"):
        model.embed(path, sample_rate=RATE)
    with pytest.raises(ValueError, match="predict needs a fine-tuned"):
        model.predict(path)
    with pytest.raises(ValueError, match="overlap"):
        AudioModel(model.model, window_seconds=1.0, overlap_seconds=1.0)


def test_classifier_predicts_named_class_probabilities(finetuned_checkpoint, labelled_corpus):
    model = AudioModel.from_checkpoint(finetuned_checkpoint)
    with open(os.path.join(labelled_corpus, "labels.txt")) as f:
        assert model.class_names == f.read().split()
    assert model.is_classifier and not model.model.multilabel
    samples = clip("tone", 2.0)
    prediction = model.predict(samples, RATE, frame_level=True)
    with torch.inference_mode():
        source = torch.from_numpy(samples)[None]
        expected = model.model.predict(source)[0].numpy()
        expected_frames = model.model.frame_probabilities(source)[0][0].numpy()
    np.testing.assert_allclose(prediction.probabilities, expected, atol=1e-6)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(prediction.frame_probabilities, expected_frames, atol=1e-6)
    np.testing.assert_allclose(prediction.timestamps, model.embed(samples, RATE).timestamps)
    top = prediction.top_k(3)
    assert [name for name, _ in top] == [model.class_names[i] for i in np.argsort(-expected)[:3]]
    assert top[0][1] >= top[1][1] >= top[2][1]
    assert model.embed(samples, RATE).frame_embeddings.shape == (len(expected_frames), model.embedding_dim)


def test_classifier_pools_the_windows_of_long_audio(finetuned_checkpoint):
    model = AudioModel.from_checkpoint(finetuned_checkpoint, window_seconds=1.0, overlap_seconds=0.4)
    samples = np.concatenate([clip("tone", 2.0), clip("clicks", 2.0)])
    mean = model.predict(samples, RATE, frame_level=True)
    highest = model.predict(samples, RATE, window_pooling="max")
    windows = plan_windows(len(samples), len(mean.timestamps), model.geometry.samples_per_step, model.window_steps, model.hop_steps)
    with torch.inference_mode():
        per_window = np.stack([model.model.predict(torch.from_numpy(samples[w.start_sample : w.end_sample])[None])[0].numpy() for w in windows])
    weights = np.array([w.keep_end - w.keep_start for w in windows]) / len(mean.timestamps)
    np.testing.assert_allclose(mean.probabilities, weights @ per_window, atol=1e-5)
    np.testing.assert_allclose(highest.probabilities, per_window.max(0), atol=1e-6)
    assert mean.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert mean.frame_probabilities.shape == (len(mean.timestamps), len(model.class_names))
    np.testing.assert_allclose(mean.frame_probabilities.sum(1), 1.0, atol=1e-5)


def test_bad_audio_fails_with_a_message_naming_it(model, tmp_path):
    from fairseq_logmel_conformer.data.audio import AudioReadError

    with pytest.raises(AudioReadError, match="missing.wav: no such file"):
        model.embed(str(tmp_path / "missing.wav"))
    # NaNs at samples 1000-1099 of a long recording, read window by window: the message says where they are.
    nan_clip = np.zeros(30 * 16000, dtype=np.float32)
    nan_clip[1000:1100] = np.nan
    with pytest.raises(ValueError, match="100 NaN or Inf sample values at frames 1000-1099"):
        model.embed(nan_clip, sample_rate=16000)
    sf.write(str(tmp_path / "nan.wav"), nan_clip, 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="nan.wav: 100 NaN or Inf sample values at frames 1000-1099"):
        model.embed(str(tmp_path / "nan.wav"))
    late = np.zeros(30 * 16000, dtype=np.float32)
    late[25 * 16000] = np.inf
    sf.write(str(tmp_path / "late.wav"), late, 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="late.wav: 1 NaN or Inf sample values at frame 400000$"):
        model.embed(str(tmp_path / "late.wav"))

"""Properties of the fine-tuning augmentations: jitter, one time mask, mixup."""
import math

import pytest
import torch

from fairseq_logmel_conformer.modules.augment import mixup, shift_waveforms, temporal_jitter, time_mask


def _padded_batch(lengths, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    values = torch.randn(len(lengths), width, generator=generator) + 3.0
    values[torch.arange(width)[None, :] >= lengths[:, None]] = 0.0
    return values, lengths


def test_shift_waveforms_matches_reference():
    waveform, lengths = _padded_batch([10, 7, 4], 10)
    shifts = torch.tensor([3, -2, 5])
    out = shift_waveforms(waveform, shifts, lengths)
    for b in range(3):
        length, shift = int(lengths[b]), int(shifts[b])
        expected = torch.zeros(10)
        for t in range(length):
            if 0 <= t - shift < length:
                expected[t] = waveform[b, t - shift]
        assert torch.equal(out[b], expected)


def test_temporal_jitter_shift_range_and_padding():
    waveform, lengths = _padded_batch([800, 500, 650, 300] * 16, 800)
    out, shifts = temporal_jitter(waveform, lengths, max_shift=200, generator=torch.Generator().manual_seed(1))
    assert shifts.shape == (64,) and shifts.dtype == torch.long
    assert int(shifts.min()) >= -200 and int(shifts.max()) <= 200
    assert (shifts > 0).any() and (shifts < 0).any()
    assert torch.equal(out, shift_waveforms(waveform, shifts, lengths))
    assert torch.all(out[torch.arange(800)[None, :] >= lengths[:, None]] == 0)
    for b in (0, 1):
        shift, length = int(shifts[b]), int(lengths[b])
        src = slice(max(0, -shift), min(length, length - shift))
        dst = slice(max(0, shift), min(length, length + shift))
        assert torch.equal(out[b, dst], waveform[b, src])


def test_temporal_jitter_reproducible_and_unpadded():
    waveform = torch.randn(5, 300)
    first = temporal_jitter(waveform, None, 50, torch.Generator().manual_seed(7))
    second = temporal_jitter(waveform, None, 50, torch.Generator().manual_seed(7))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    unshifted, _ = temporal_jitter(waveform, max_shift=0)
    assert torch.equal(unshifted, waveform)


def test_jitter_shape_errors():
    with pytest.raises(ValueError, match=r"\(4, 2, 3\)"):
        temporal_jitter(torch.zeros(4, 2, 3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        temporal_jitter(torch.zeros(4, 10), torch.tensor([1, 2, 3]))


def test_time_mask_single_run_inside_valid_frames():
    frames, lengths = _padded_batch([50, 37, 12, 4] * 8, 50)
    frames = frames[:, :, None].expand(-1, -1, 6) * torch.linspace(0.5, 1.5, 6)
    # Log-mel padding is rarely zero (log of a floor value); it must not leak into the fill.
    frames = torch.where(frames == 0, torch.tensor(-20.0), frames)
    masked, mask = time_mask(frames, lengths, max_fraction=0.2, generator=torch.Generator().manual_seed(3))
    assert masked.shape == frames.shape and mask.shape == (32, 50)
    changed = (masked != frames).any(dim=2)
    for b in range(32):
        length = int(lengths[b])
        runs = torch.nonzero(mask[b]).flatten()
        limit = math.floor(0.2 * length)
        if limit == 0:
            assert runs.numel() == 0
            assert torch.equal(masked[b], frames[b])
            continue
        assert 1 <= runs.numel() <= limit
        assert torch.equal(runs, torch.arange(int(runs[0]), int(runs[0]) + runs.numel()))
        assert int(runs[-1]) < length
        assert torch.equal(changed[b], mask[b])
        assert torch.equal(masked[b][~mask[b]], frames[b][~mask[b]])
        fill = frames[b, :length].mean()
        assert torch.allclose(masked[b][mask[b]], fill.expand(runs.numel(), 6))
    widths = mask.sum(1)
    assert len(set(widths[lengths == 50].tolist())) > 1


def test_time_mask_without_lengths_and_errors():
    frames = torch.randn(3, 20, 4)
    masked, mask = time_mask(frames, None, 0.5, torch.Generator().manual_seed(0))
    assert bool((mask.sum(1) >= 1).all()) and bool((mask.sum(1) <= 10).all())
    for b in range(3):
        assert torch.allclose(masked[b][mask[b]], frames[b].mean().expand(int(mask[b].sum()), 4))
    with pytest.raises(ValueError, match=r"\(20, 4\)"):
        time_mask(torch.zeros(20, 4))
    with pytest.raises(ValueError, match=r"\(2,\)"):
        time_mask(frames, torch.tensor([20, 20]))


def test_mixup_formula_and_lambda_distribution():
    frames = torch.randn(4096, 3, 2)
    mixed, lam, perm = mixup(frames, alpha=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.sort(perm).values, torch.arange(4096))
    assert bool((lam >= 0.5).all()) and bool((lam <= 1.0).all())
    expected = lam[:, None, None] * frames + (1 - lam[:, None, None]) * frames[perm]
    assert torch.allclose(mixed, expected)
    # E[max(l, 1 - l)] for l ~ Beta(0.5, 0.5) is 1/2 + 1/pi; the standard error here is ~0.003.
    assert abs(float(lam.mean()) - (0.5 + 1 / math.pi)) < 0.02
    # Beta(0.5, 0.5) piles up near 0 and 1, so lam concentrates near 1 rather than near 0.5.
    assert float((lam > 0.9).float().mean()) > float((lam < 0.6).float().mean())


def test_mixup_alpha_and_reproducibility():
    frames = torch.randn(2048, 4)
    _, lam_large, _ = mixup(frames, alpha=50.0, generator=torch.Generator().manual_seed(0))
    assert float(lam_large.mean()) < 0.6
    first = mixup(frames, 0.5, torch.Generator().manual_seed(5))
    second = mixup(frames, 0.5, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    with pytest.raises(ValueError, match="alpha"):
        mixup(frames, alpha=0.0)
    with pytest.raises(ValueError, match=r"\(0, 4\)"):
        mixup(torch.zeros(0, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_augmentations_stay_on_device():
    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    waveform = torch.randn(4, 1000, device=device)
    lengths = torch.tensor([1000, 800, 600, 400], device=device)
    jittered, shifts = temporal_jitter(waveform, lengths, generator=generator)
    masked, mask = time_mask(torch.randn(4, 30, 64, device=device), lengths // 40, generator=generator)
    mixed, lam, perm = mixup(masked, generator=generator)
    for tensor in (jittered, shifts, masked, mask, mixed, lam, perm):
        assert tensor.device.type == "cuda"
    assert torch.equal(jittered.cpu(), shift_waveforms(waveform.cpu(), shifts.cpu(), lengths.cpu()))

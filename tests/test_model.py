"""The pre-training model: parameter counts, shapes, masking, distractors, loss, gradients, padding invariance."""
import copy
import os

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torchaudio.models.conformer import ConformerLayer

from fairseq_logmel_conformer import CONFIG_DIR
from fairseq_logmel_conformer.criterions.logmel_contrastive import contrastive_logits
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerConfig, LogmelConformerModel, masked_mean
from fairseq_logmel_conformer.modules.conformer import ConvFirstConformerLayer, MaskedConvolutionModule
from fairseq_logmel_conformer.modules.frontend import StackedFeatureEncoder
from fairseq_logmel_conformer.modules.masking import (
    compute_span_mask,
    masked_steps_in_order,
    max_masked_steps,
    sample_cross_clip_distractors,
    sample_distractors,
)


def model_config_from_yaml(config_name: str, **overrides) -> LogmelConformerConfig:
    """The model section of a shipped pre-training config, resolved like fairseq-hydra-train does."""
    with initialize_config_dir(config_dir=os.path.join(CONFIG_DIR, "pretraining"), version_base=None):
        cfg = compose(config_name=config_name, overrides=["task.data=unused"])
    model = OmegaConf.to_container(cfg.model)
    model.pop("_name")
    model.update(sample_rate=cfg.task.sample_rate, **overrides)
    return LogmelConformerConfig(**model)


def tiny_model(**overrides) -> LogmelConformerModel:
    torch.manual_seed(0)
    return LogmelConformerModel(model_config_from_yaml("pretrain_tiny", **overrides))


@pytest.mark.parametrize(
    "config_name, millions",
    [("pretrain_cfS", 18.4), ("pretrain_cfL", 88.1), ("pretrain_cfL_8blocks", 58.9), ("pretrain_cfL_20blocks", 146.6)],
)
def test_parameter_counts_match_the_paper(config_name, millions):
    model = LogmelConformerModel(model_config_from_yaml(config_name))
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - millions) < 0.1, f"{config_name}: {count:.3f}M parameters, paper {millions}M"


@pytest.mark.parametrize("name", ["tiny", "small", "cfS", "cfL"])
def test_scratch_encoder_config_builds_the_pretraining_architecture(name):
    """+encoder=<name> (fine-tuning from scratch) and pretrain_<name> compose the same model from arch/<name>.yaml, or
    the from-scratch baseline would not be the pre-trained model's architecture."""
    with initialize_config_dir(config_dir=os.path.join(CONFIG_DIR, "finetuning"), version_base=None):
        cfg = compose(config_name="finetune_esc50", overrides=["task.data=unused", "model.pretrained_path=null", f"+encoder={name}"])
    scratch = OmegaConf.to_container(cfg.model.encoder)
    assert scratch.pop("_name") == "logmel_conformer"
    pretraining = model_config_from_yaml(f"pretrain_{name}")
    assert OmegaConf.merge(OmegaConf.structured(LogmelConformerConfig(sample_rate=16000)), scratch) == OmegaConf.structured(pretraining)
    assert pretraining.feature_norm == "global"


def test_cfL_uses_the_paper_kernels_and_widths():
    cfg = model_config_from_yaml("pretrain_cfL")
    model = LogmelConformerModel(cfg)
    kernels = [layer.conv_module.depthwise.kernel_size[0] for layer in model.context_encoder.layers]
    assert kernels == [31] + [15] * 11
    assert (cfg.encoder_dim, cfg.encoder_heads, cfg.encoder_ffn_dim, cfg.dropout) == (768, 12, 1024, 0.1)
    assert model.frontend.win_length == 1024 and model.frontend.hop_length == 320 and model.frontend.n_mels == 64


@pytest.mark.parametrize("num_samples", [960, 1279, 16001, 23457])
def test_output_shapes_for_odd_lengths(num_samples):
    model = tiny_model().eval()
    features, padding = model.extract_features(torch.randn(2, num_samples))
    expected_steps = (1 + num_samples // 320) // 4
    assert features.shape == (2, expected_steps, 64)
    assert padding is None
    out = model(torch.randn(2, num_samples))
    assert out["context"].shape == out["targets"].shape == (2, expected_steps, 256)


def test_padding_mask_lengths_follow_each_clip():
    model = tiny_model().eval()
    lengths = torch.tensor([16000, 12345, 4000])
    source = torch.randn(3, 16000)
    padding_mask = torch.arange(16000)[None, :] >= lengths[:, None]
    _, step_padding = model.extract_features(source * ~padding_mask, padding_mask)
    assert (~step_padding).sum(1).tolist() == [((1 + n // 320) // 4) for n in lengths.tolist()]


def test_int16_pcm_input_gives_the_features_of_its_float_waveform():
    """A packed corpus's batches are int16 16-bit PCM; the model reads them as soundfile reads 16-bit files."""
    model = tiny_model().eval()
    pcm = torch.randint(-32768, 32768, (2, 16000), dtype=torch.int16)
    padding_mask = torch.arange(16000)[None, :] >= torch.tensor([16000, 9000])[:, None]
    pcm = pcm.masked_fill(padding_mask, 0)
    with torch.no_grad():
        from_pcm, _ = model.extract_features(pcm, padding_mask)
        from_float, _ = model.extract_features(pcm.double().div(32768).float(), padding_mask)
    assert torch.equal(from_pcm, from_float)


@pytest.mark.parametrize("feature_norm", ["layer", "global"])
def test_batched_forward_equals_per_clip_forward_in_eval_mode(feature_norm):
    model = tiny_model(feature_norm=feature_norm).eval()
    lengths = [16000, 11111, 7000]
    clips = [torch.randn(n) for n in lengths]
    batch = torch.zeros(3, max(lengths))
    padding_mask = torch.ones(3, max(lengths), dtype=torch.bool)
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = clip
        padding_mask[i, : len(clip)] = False
    with torch.no_grad():
        batched, step_padding = model.extract_features(batch, padding_mask)
        for i, clip in enumerate(clips):
            alone, _ = model.extract_features(clip[None])
            valid = (~step_padding[i]).sum()
            assert valid == alone.shape[1]
            torch.testing.assert_close(batched[i, :valid], alone[0], atol=1e-4, rtol=1e-4)
        clip_embeddings = masked_mean(*model.extract_features(batch, padding_mask))
        torch.testing.assert_close(clip_embeddings[1], masked_mean(*model.extract_features(clips[1][None]))[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("training", [False, True])
def test_convolution_module_computes_the_convolutions_its_weights_define(training):
    torch.manual_seed(0)
    module = MaskedConvolutionModule(dim=16, kernel_size=5, dropout=0.0).train(training)
    with torch.no_grad():
        module.depthwise.bias.normal_()
        module.batch_norm.running_mean.normal_()
    reference_module = copy.deepcopy(module)
    x = torch.randn(9, 3, 16)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True
    # The (B, D, T) convolution form of the same layers: what checkpoints' Conv1d weights mean.
    reference = torch.nn.functional.glu(reference_module.pointwise_in(reference_module.layer_norm(x).permute(1, 2, 0)), dim=1)
    reference = reference.masked_fill(padding[:, None, :], 0.0)
    reference = torch.nn.functional.silu(reference_module.batch_norm(reference_module.depthwise(reference)))
    reference = reference_module.pointwise_out(reference)
    output = module(x, padding)
    assert output.is_contiguous()
    torch.testing.assert_close(output, reference.permute(2, 0, 1))
    # Training updates batch norm's running statistics exactly as the (B, D, T) form does.
    torch.testing.assert_close(module.batch_norm.running_var, reference_module.batch_norm.running_var)
    torch.testing.assert_close(module.batch_norm.running_mean, reference_module.batch_norm.running_mean)


@pytest.mark.parametrize("padded", [False, True])
def test_self_attention_computes_what_its_multihead_attention_weights_define(padded):
    torch.manual_seed(0)
    layer = ConvFirstConformerLayer(dim=16, ffn_dim=32, num_heads=4, kernel_size=5, dropout=0.5).eval()
    x = torch.randn(9, 3, 16, requires_grad=True)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[1, 6:] = True
    padding = padding if padded else None
    reference, _ = layer.self_attn(x, x, x, key_padding_mask=padding, need_weights=False)
    output = layer.self_attention(x, padding)
    torch.testing.assert_close(output, reference)
    weights = [x, layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight]
    for mine, theirs in zip(torch.autograd.grad(output.square().sum(), weights), torch.autograd.grad(reference.square().sum(), weights)):
        torch.testing.assert_close(mine, theirs)
    # In training, the attention weights' dropout applies.
    assert not torch.allclose(layer.train().self_attention(x, padding), reference)


@pytest.mark.parametrize("training", [True, False])
def test_an_unpadded_block_computes_torchaudios_convolution_first_conformer_layer(training):
    """Without padding the blocks' own layouts, attention call and residual adds change nothing: same weights, same outputs."""
    torch.manual_seed(0)
    reference = ConformerLayer(16, 32, 4, 5, dropout=0.0, convolution_first=True).train(training)
    layer = ConvFirstConformerLayer(dim=16, ffn_dim=32, num_heads=4, kernel_size=5, dropout=0.0).train(training)
    their_names = {"pointwise_in": "sequential.0", "depthwise": "sequential.2", "batch_norm": "sequential.3", "pointwise_out": "sequential.5"}
    weights = reference.state_dict()
    weights["conv_module.sequential.3.running_mean"].normal_()
    weights["conv_module.sequential.3.running_var"].uniform_(0.5, 2.0)
    renamed = {}
    for key in layer.state_dict():
        module, _, rest = key.partition(".")
        sub, _, leaf = rest.partition(".")
        renamed[key] = weights[f"conv_module.{their_names[sub]}.{leaf}" if module == "conv_module" and sub in their_names else key]
    layer.load_state_dict(renamed)
    x = torch.randn(9, 3, 16, requires_grad=True)
    output, expected = layer(x, None), reference(x, None)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(torch.autograd.grad(output.square().sum(), x)[0], torch.autograd.grad(expected.square().sum(), x)[0])


def test_every_block_works_on_contiguous_activations():
    """A strided (T, B, D) view anywhere in the blocks makes each op after it copy its input first."""
    model = tiny_model().train()
    strided = []
    for name, module in model.context_encoder.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.Linear)):
            module.register_forward_pre_hook(lambda _, args, name=name: None if args[0].is_contiguous() else strided.append(name))
    source = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 12000:] = True
    model(source, padding_mask=padding)
    assert model.context_encoder.layers and not strided


def test_global_feature_norm_keeps_the_step_level_that_layer_norm_removes():
    frames = torch.randn(2, 40, 64)
    louder = frames + 4.6  # the same sound 10x louder: +ln(100) in every bin of a power log-mel
    with torch.no_grad():
        layer = tiny_model(feature_norm="layer").feature_encoder
        torch.testing.assert_close(layer(louder)[0], layer(frames)[0], atol=1e-4, rtol=1e-4)
        encoder = tiny_model(feature_norm="global", logmel_mean=-3.0, logmel_std=5.0).feature_encoder
        assert not any("layer_norm" in name for name, _ in encoder.named_parameters())
        stacked = frames.reshape(2, 10, 256)
        torch.testing.assert_close(encoder(frames)[0], encoder.proj((stacked + 3.0) / 5.0))
        shift = encoder.proj.weight.sum(1) * 4.6 / 5.0
        torch.testing.assert_close(encoder(louder)[0] - encoder(frames)[0], shift.expand(2, 10, -1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="norm must be 'layer' or 'global', got 'batch'"):
        StackedFeatureEncoder(norm="batch")
    with pytest.raises(ValueError, match="std must be positive, got 0.0"):
        StackedFeatureEncoder(norm="global", std=0.0)


def test_span_mask_covers_about_mask_prob_and_never_padding():
    torch.manual_seed(0)
    lengths = torch.randint(20, 200, (512,))
    mask = compute_span_mask(lengths, 200, mask_prob=0.3, span=3)
    padding = torch.arange(200)[None, :] >= lengths[:, None]
    assert not (mask & padding).any()
    ratio = mask.sum() / lengths.sum()
    assert abs(ratio - 0.3) < 0.02, ratio
    # Spans do not overlap, so every clip's masked count is a multiple of the span length.
    assert (mask.sum(1) % 3 == 0).all()


def test_span_mask_never_masks_more_steps_than_its_static_bound():
    """The loss sizes its tensors by max_masked_steps; a clip masked past it would lose steps from the loss."""
    torch.manual_seed(0)
    for max_len, mask_prob, span in [(125, 0.3, 3), (200, 0.3, 3), (60, 0.5, 2), (7, 0.3, 3), (31, 0.65, 4)]:
        lengths = torch.randint(1, max_len + 1, (4096,))
        lengths[:8] = max_len
        counts = compute_span_mask(lengths, max_len, mask_prob, span).sum(1)
        bound = max_masked_steps(max_len, mask_prob, span)
        assert bound < mask_prob * max_len + span
        assert int(counts.max()) == bound, "the bound is reached: it is tight"


def test_masked_steps_in_order_left_aligns_each_clips_masked_steps():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 2, 6]] = True
    mask[1, [0, 7]] = True
    order = masked_steps_in_order(mask, 3)
    assert order.shape == (2, 3)
    assert order[0].tolist() == [1, 2, 6] and order[1, :2].tolist() == [0, 7]


def test_distractors_come_from_other_masked_steps_of_the_same_clip():
    torch.manual_seed(0)
    counts = torch.tensor([6, 20, 1, 0])
    ranks, valid = sample_distractors(counts, max_masked=20, num_distractors=8)
    assert ranks.shape == valid.shape == (4, 20, 8)
    for clip, count in enumerate(counts.tolist()):
        for own in range(count):
            picked = ranks[clip, own][valid[clip, own]].tolist()
            assert len(picked) == min(8, count - 1)
            assert len(set(picked)) == len(picked), "drawn without replacement"
            assert own not in picked and all(0 <= rank < count for rank in picked)
        assert not valid[clip, count:].any(), "rows past the clip's masked steps have no distractor"


def test_cross_clip_distractors_come_from_every_other_clip_and_never_the_own():
    counts = torch.tensor([3, 5, 0, 1])
    generator = torch.Generator().manual_seed(0)
    clips, ranks, valid = sample_cross_clip_distractors(counts, 5, 2000, generator)
    assert clips.shape == ranks.shape == valid.shape == (4, 5, 2000)
    for clip, count in enumerate(counts.tolist()):
        assert valid[clip, :count].all() and not valid[clip, count:].any()
        for own in range(count):
            drawn = clips[clip, own]
            assert (drawn != clip).all()
            others = counts * (torch.arange(4) != clip)
            # Every masked step outside the clip, about equally often, and nothing else.
            share = torch.bincount(drawn * 5 + ranks[clip, own], minlength=20).reshape(4, 5).float() / 2000
            expected = (torch.arange(5)[None, :] < others[:, None]).float()
            torch.testing.assert_close(share, expected / expected.sum(), atol=0.03, rtol=0)
    _, _, valid = sample_cross_clip_distractors(torch.tensor([0, 2]), 2, 4)
    assert not valid.any(), "a batch with one clip holding masked steps has no cross-clip distractor"


def test_cross_clip_distractors_add_columns_and_keep_lone_masked_steps():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [0, 1, 2]] = True
    mask[1, [4]] = True
    context, targets = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    logits, scored = contrastive_logits(context, targets, mask, 100, 0.1, cross_clip_distractors=6, max_masked=3)
    assert logits.shape == (2, 3, 1 + 2 + 6)
    assert scored.tolist() == [[True, True, True], [True, False, False]], "the lone masked step of clip 1 is scored against clip 0"
    rows = logits[scored]
    assert torch.isfinite(rows[:, 3:]).all()
    assert torch.isinf(rows[3, 1:3]).all(), "clip 1 has no same-clip distractor"


def test_contrastive_logits_mark_missing_and_identical_distractors():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [0, 1, 2]] = True
    mask[1, [4]] = True  # a single masked step has no distractor and is left out
    targets = torch.randn(2, 10, 8)
    targets[0, 2] = targets[0, 1]  # digital silence: two identical latents
    logits, scored = contrastive_logits(torch.randn(2, 10, 8), targets, mask, 100, 0.1, max_masked=3)
    assert scored.tolist() == [[True, True, True], [False, False, False]]
    rows = logits[scored]
    assert rows.shape == (3, 3)
    assert torch.isfinite(rows[:, 0]).all()
    assert torch.isinf(rows[1]).sum() == 1 and torch.isinf(rows[2]).sum() == 1
    assert torch.isfinite(rows[0]).all()


def contrastive_logits_by_definition(context, targets, mask, num_distractors, temperature, cross_clip_distractors):
    """The loss's logits written out clip by clip, step by step: each candidate's cosine with the prediction.

    Draws the same distractors as ``contrastive_logits`` under the same seed (same samplers, same order).
    """
    batch, steps, _ = context.shape
    counts = mask.sum(1)
    counts = counts * ((counts > 1) | (counts.sum() - counts > 0))
    ranks, valid = sample_distractors(counts, steps, num_distractors)
    clips, cross_ranks, cross_valid = sample_cross_clip_distractors(counts, steps, cross_clip_distractors)
    # Slots past a clip's masked steps are invalid whatever they point at: step 0 here.
    masked = [torch.cat([mask[b].nonzero()[:, 0], torch.zeros(steps, dtype=torch.long)]) for b in range(batch)]
    rows = []
    for b in range(batch):
        for i in range(int(counts[b])):
            positive = targets[b, masked[b][i]]
            negatives = [targets[b, masked[b][r]] for r in ranks[b, i]]
            negatives += [targets[c, masked[c][r]] for c, r in zip(clips[b, i].tolist(), cross_ranks[b, i].tolist())]
            candidates = torch.stack([positive] + negatives)
            row = torch.nn.functional.cosine_similarity(context[b, masked[b][i]][None], candidates, dim=-1) / temperature
            identical = (candidates[1:] == positive).all(-1)
            row[1:] = row[1:].masked_fill(~torch.cat([valid[b, i], cross_valid[b, i]]) | identical, float("-inf"))
            rows.append(row)
    return torch.stack(rows)


def test_contrastive_logits_match_the_definition_and_ignore_autocast():
    torch.manual_seed(0)
    mask = compute_span_mask(torch.tensor([60, 45, 3, 60]), 60, mask_prob=0.3, span=3)
    context, targets = torch.randn(4, 60, 16), torch.randn(4, 60, 16)
    targets[3, mask[3].nonzero()[:2, 0]] = targets[0, mask[0].nonzero()[0, 0]]  # silence in two clips
    torch.manual_seed(1)
    expected = contrastive_logits_by_definition(context, targets, mask, 100, 0.1, cross_clip_distractors=8)
    torch.manual_seed(1)
    logits, scored = contrastive_logits(context, targets, mask, 100, 0.1, cross_clip_distractors=8)
    logits = logits[scored]
    assert torch.isinf(expected).any() and torch.equal(torch.isinf(logits), torch.isinf(expected))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # fairseq's common.amp runs the criterion under autocast, which would take the products to bf16.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        autocast_logits, _ = contrastive_logits(context, targets, mask, 100, 0.1, cross_clip_distractors=8)
    assert autocast_logits.dtype == torch.float32
    torch.testing.assert_close(autocast_logits[scored], expected, atol=1e-5, rtol=1e-5)


def test_the_static_bound_on_masked_steps_leaves_the_loss_unchanged():
    """With every other masked step as a distractor the loss is the same whatever the tensors' padded width."""
    torch.manual_seed(0)
    bound = max_masked_steps(125, 0.3, 3)
    mask = compute_span_mask(torch.tensor([125, 125, 90, 40]), 125, mask_prob=0.3, span=3)
    context, targets = torch.randn(4, 125, 16), torch.randn(4, 125, 16)

    def row_losses(max_masked):
        logits, scored = contrastive_logits(context, targets, mask, 200, 0.1, max_masked=max_masked)
        return torch.nn.functional.cross_entropy(logits[scored], torch.zeros(int(scored.sum()), dtype=torch.long), reduction="none")

    assert bound < 125
    torch.testing.assert_close(row_losses(bound), row_losses(None), atol=1e-5, rtol=1e-5)


def test_a_padded_pretraining_step_never_reads_a_value_from_the_device(monkeypatch):
    """On fake tensors, which hold shapes but no values, anything that needs a value on the host (a host-device
    sync on a GPU: ``.item()``, ``nonzero``, an ``if`` on a tensor) raises. Masking, forward, loss and backward pass."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fairseq_logmel_conformer.criterions import logmel_contrastive

    # On the CPU the criterion reads the loss to report a non-finite one: free there, skipped on a GPU.
    monkeypatch.setattr(logmel_contrastive, "report_nonfinite_loss", lambda *args: False)
    criterion = logmel_contrastive.LogmelContrastiveCriterion(logmel_contrastive.LogmelContrastiveConfig(cross_clip_distractors=5), task=None)
    model = tiny_model().train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        source = torch.randn(3, 32000)
        padding_mask = torch.arange(32000)[None, :] >= torch.tensor([32000, 24000, 9000])[:, None]
        loss, sample_size, _ = criterion(model, {"net_input": {"source": source, "padding_mask": padding_mask}})
        loss.backward()
    assert loss.shape == sample_size.shape == ()


def test_a_distractor_pointing_the_same_way_as_the_positive_is_left_out():
    """Under a cosine a latent scaled by 3 scores exactly as the positive: no model could tell them apart."""
    torch.manual_seed(0)
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [0, 1, 2]] = True
    targets = torch.randn(1, 10, 8)
    targets[0, 2] = 3 * targets[0, 1]
    targets[0, 0] = targets[0, 1] + 0.05 * torch.randn(8)  # close, but a different direction: kept
    logits, _ = contrastive_logits(torch.randn(1, 10, 8), targets, mask, 100, 0.1, max_masked=3)
    assert torch.isinf(logits[0]).sum(1).tolist() == [0, 1, 1]


def test_loss_is_finite_and_gradients_reach_every_parameter():
    from fairseq_logmel_conformer.criterions.logmel_contrastive import LogmelContrastiveConfig, LogmelContrastiveCriterion

    model = tiny_model().train()
    criterion = LogmelContrastiveCriterion(LogmelContrastiveConfig(), task=None)
    source = torch.randn(4, 32000)
    padding_mask = torch.zeros(4, 32000, dtype=torch.bool)
    padding_mask[1, 20000:] = True
    loss, sample_size, log = criterion(model, {"net_input": {"source": source, "padding_mask": padding_mask}})
    assert torch.isfinite(loss) and sample_size > 0 and int(log["masked_steps"]) >= sample_size
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient for {missing}"


def test_contrastive_task_is_learnable():
    """A few steps on fixed clips lower the loss well below its starting value."""
    import numpy as np

    from fairseq_logmel_conformer.criterions.logmel_contrastive import LogmelContrastiveConfig, LogmelContrastiveCriterion
    from fairseq_logmel_conformer.data.synthetic import synthesize

    rng = np.random.default_rng(0)
    source = torch.tensor(np.stack([synthesize(c, 48000, 16000, rng) for c in ["chirp", "tremolo", "clicks", "noise_burst"]]))
    sample = {"net_input": {"source": source, "padding_mask": torch.zeros_like(source, dtype=torch.bool)}}
    model = tiny_model(dropout=0.0).train()
    criterion = LogmelContrastiveCriterion(LogmelContrastiveConfig(), task=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        torch.manual_seed(step)
        loss, sample_size, _ = criterion(model, sample)
        optimizer.zero_grad()
        (loss / sample_size).backward()
        optimizer.step()
        losses.append(loss.item() / sample_size)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_loss_depends_only_on_masked_steps():
    """The context at unmasked steps never enters the loss; the context at a masked step does."""
    torch.manual_seed(0)
    mask = compute_span_mask(torch.tensor([50, 50]), 50, mask_prob=0.3, span=3)
    context, targets = torch.randn(2, 50, 16), torch.randn(2, 50, 16)

    def scored_logits(context):
        torch.manual_seed(1)
        logits, scored = contrastive_logits(context, targets, mask, 100, 0.1)
        return logits[scored]

    reference = scored_logits(context)
    changed = context.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 16)
    torch.testing.assert_close(scored_logits(changed), reference)
    changed[mask] = torch.randn(int(mask.sum()), 16)
    assert not torch.allclose(scored_logits(changed), reference)
    assert not mask.all() and mask.any()


def test_a_checkpoint_from_before_feature_norm_loads_with_the_layer_norm_it_was_trained_with(tmp_path, pretrained_checkpoint):
    """The default is global; a checkpoint saved before the field existed holds the feature encoder's layer norm
    and no feature_norm in its config. Loaded through fairseq, the model adopts the norm it was trained with."""
    from fairseq_logmel_conformer.checkpoint import load_model

    state = torch.load(pretrained_checkpoint, map_location="cpu", weights_only=False)
    model_cfg = dict(state["cfg"]["model"])
    del model_cfg["feature_norm"]
    state["cfg"]["model"] = model_cfg
    torch.manual_seed(0)
    old = LogmelConformerModel(LogmelConformerConfig(**{k: v for k, v in model_cfg.items() if k != "_name"}, feature_norm="layer"))
    with torch.no_grad():
        old.feature_encoder.layer_norm.weight.uniform_(0.5, 1.5)
    state["model"] = old.state_dict()
    path = str(tmp_path / "old.pt")
    torch.save(state, path)
    assert LogmelConformerConfig.feature_norm == "global"
    loaded, _, _ = load_model(path)
    assert loaded.cfg.feature_norm == "layer"
    source = torch.randn(2, 16000)
    old.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.extract_features(source)[0], old.extract_features(source)[0], rtol=0, atol=0)

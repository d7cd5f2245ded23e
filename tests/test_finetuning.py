"""Fine-tuning pieces: label files, the classifier's heads and augmentations, the consistency loss, datasets, metrics."""
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fairseq_logmel_conformer.criterions.logmel_consistency import LogmelConsistencyConfig, LogmelConsistencyCriterion, symmetric_kl
from fairseq_logmel_conformer.data.labelled_dataset import LabelledAudioDataset
from fairseq_logmel_conformer.data.labels import LabelVocabulary, read_label_file
from fairseq_logmel_conformer.data.manifest_dataset import ManifestAudioDataset
from fairseq_logmel_conformer.metrics import compute_metrics
from fairseq_logmel_conformer.models.logmel_conformer import LogmelConformerModel
from fairseq_logmel_conformer.models.logmel_conformer_classifier import LogmelConformerClassifier, LogmelConformerClassifierConfig, encoder_config
from fairseq_logmel_conformer.tasks.labelled_audio import ClipScoreMeter

TINY_ENCODER = {"_name": "logmel_conformer", "encoder_dim": 32, "encoder_layers": 1, "encoder_heads": 4, "encoder_ffn_dim": 64, "first_kernel_size": 7}


def classifier(pooling="mean", multilabel=True, encoder=TINY_ENCODER, **overrides) -> LogmelConformerClassifier:
    torch.manual_seed(0)
    cfg = OmegaConf.structured(
        LogmelConformerClassifierConfig(sample_rate=16000, encoder=encoder, pooling=pooling, class_names=["a", "b", "c"], multilabel=multilabel, **overrides)
    )
    return LogmelConformerClassifier(cfg)


# ---- label files ----------------------------------------------------------------------------------------


@pytest.fixture
def vocabulary(tmp_path):
    (tmp_path / "labels.txt").write_text("dog\tDog bark\ncat\nbird\n")
    return LabelVocabulary.read(str(tmp_path / "labels.txt"))


def test_vocabulary_keeps_order_and_display_names(vocabulary):
    assert vocabulary.names == ["dog", "cat", "bird"] and vocabulary.display_names == ["Dog bark", "cat", "bird"]


def test_label_file_parses_multi_label_lines(tmp_path, vocabulary):
    (tmp_path / "x.labels").write_text("dog,bird\n\ncat\n")
    assert read_label_file(str(tmp_path / "x.labels"), vocabulary, 3, single_label=False) == [[0, 2], [], [1]]


@pytest.mark.parametrize(
    "content, num_clips, single_label, message",
    [
        ("dog\nfox\n", 2, False, "x.labels:2: unknown label(s) ['fox']"),
        ("dog\ncat\n", 3, False, "2 label lines, but the manifest lists 3 clips"),
        ("dog\n\n", 2, True, "x.labels:2: expected exactly one label"),
        ("dog,cat\n", 1, True, "x.labels:1: expected exactly one label"),
    ],
)
def test_label_file_errors_name_the_file_and_line(tmp_path, vocabulary, content, num_clips, single_label, message):
    (tmp_path / "x.labels").write_text(content)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        read_label_file(str(tmp_path / "x.labels"), vocabulary, num_clips, single_label)


# ---- classifier ---------------------------------------------------------------------------------------------


def test_linear_softmax_pooling_is_sum_p_squared_over_sum_p_over_valid_frames():
    model = classifier("linear_softmax", jitter_samples=0, time_mask_fraction=0, mixup_alpha=0).eval()
    source = torch.randn(2, 16000)
    padding_mask = torch.zeros(2, 16000, dtype=torch.bool)
    padding_mask[1, 9000:] = True
    frame_probs, step_padding = model.frame_probabilities(source, padding_mask)
    valid = (~step_padding).float()[..., None]
    expected = (frame_probs**2 * valid).sum(1) / (frame_probs * valid).sum(1)
    torch.testing.assert_close(model.predict(source, padding_mask), expected)
    assert model(source, padding_mask)["logits"] is None


def test_mean_pooling_softmax_for_single_label():
    model = classifier("mean", multilabel=False).eval()
    probs = model.predict(torch.randn(4, 12000))
    torch.testing.assert_close(probs.sum(-1), torch.ones(4))


def test_augmentations_only_in_training_mode():
    model = classifier(encoder_output_dropout=0.0)
    source = torch.randn(4, 16000)
    model.eval()
    torch.testing.assert_close(model(source)["logits"], model(source)["logits"])
    model.train()
    model.encoder.eval()  # keeps the encoder's dropout out of the comparison: only the augmentations differ
    first, second = model(source)["logits"], model(source)["logits"]
    assert not torch.allclose(first, second), "jitter, time mask and mixup draw anew on each pass"


@pytest.mark.parametrize("switch", ["jitter_samples", "time_mask_fraction", "mixup_alpha"])
def test_each_augmentation_can_be_switched_off(switch):
    off = {"jitter_samples": 0, "time_mask_fraction": 0.0, "mixup_alpha": 0.0}
    on = dict(off, **{switch: {"jitter_samples": 200, "time_mask_fraction": 0.2, "mixup_alpha": 0.5}[switch]})
    source = torch.randn(4, 16000)
    for settings, should_change in ((off, False), (on, True)):
        model = classifier(encoder_output_dropout=0.0, **settings).train()
        model.encoder.eval()
        changed = not torch.allclose(model(source)["logits"], model(source)["logits"])
        assert changed == should_change, (settings, changed)


def test_frozen_encoder_gets_no_gradient_until_the_given_update():
    model = classifier(freeze_encoder_updates=10).train()
    model(torch.randn(2, 16000))["logits"].sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters()) and model.head.weight.grad is not None
    model.zero_grad()
    model.set_num_updates(10)
    model(torch.randn(2, 16000))["logits"].sum().backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter is used: none would stall DDP"


def test_reinit_last_blocks_loads_the_others_and_starts_those_where_a_scratch_run_starts():
    two_blocks = dict(TINY_ENCODER, encoder_layers=2)
    pretrained = LogmelConformerModel(encoder_config(OmegaConf.structured(LogmelConformerClassifierConfig(sample_rate=16000, encoder=two_blocks))))
    with torch.no_grad():
        for parameter in pretrained.parameters():
            parameter.add_(1.0)
    scratch = classifier(encoder=two_blocks).encoder.state_dict()
    model = classifier(encoder=two_blocks, reinit_last_blocks=1)
    model.load_encoder_weights(pretrained.state_dict())
    for name, value in model.encoder.state_dict().items():
        expected = scratch[name] if name.startswith("context_encoder.layers.1.") else pretrained.state_dict()[name]
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def test_reinit_last_blocks_cannot_exceed_the_encoders_blocks():
    with pytest.raises(ValueError, match="model.reinit_last_blocks=2, but the encoder has 1 blocks"):
        classifier(reinit_last_blocks=2)


def test_encoder_sample_rate_must_match_the_task():
    with pytest.raises(ValueError, match="pre-trained at 8000 Hz but the task reads audio at 16000 Hz"):
        LogmelConformerClassifier(OmegaConf.structured(LogmelConformerClassifierConfig(sample_rate=16000, encoder=dict(TINY_ENCODER, sample_rate=8000), class_names=["a"])))


# ---- consistency criterion -------------------------------------------------------------------------------


class _Task:
    def __init__(self, multilabel):
        self.multilabel = multilabel


def test_symmetric_kl_matches_the_definition():
    p, q = torch.tensor([[0.7, 0.2, 0.1]]), torch.tensor([[0.5, 0.25, 0.25]])
    expected = (p * (p / q).log()).sum() + (q * (q / p).log()).sum()
    torch.testing.assert_close(symmetric_kl(p, q, multilabel=False), expected[None])
    bernoulli = sum(a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b)) + b * np.log(b / a) + (1 - b) * np.log((1 - b) / (1 - a)) for a, b in zip(p[0].tolist(), q[0].tolist())) / 3
    torch.testing.assert_close(symmetric_kl(p, q, multilabel=True), torch.tensor([bernoulli], dtype=torch.float32))
    assert symmetric_kl(p, p, multilabel=True).abs().max() < 1e-6


@pytest.mark.parametrize("multilabel", [True, False])
def test_consistency_weight_zero_means_one_pass_and_no_term(multilabel):
    model = classifier(multilabel=multilabel).train()
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    target = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    sample = {"net_input": {"source": torch.randn(2, 16000), "padding_mask": None}, "target": target, "id": torch.arange(2)}
    loss, sample_size, log = LogmelConsistencyCriterion(LogmelConsistencyConfig(consistency_weight=0.0), _Task(multilabel))(model, sample)
    assert len(calls) == 1 and float(log["consistency"]) == 0 and sample_size == 2
    loss2, _, log2 = LogmelConsistencyCriterion(LogmelConsistencyConfig(consistency_weight=2.0), _Task(multilabel))(model, sample)
    assert len(calls) == 3 and float(log2["consistency"]) > 0
    torch.testing.assert_close(loss2, log2["supervised_loss"] + 2.0 * log2["consistency"])
    assert torch.isfinite(loss) and torch.isfinite(loss2)


@pytest.mark.parametrize("multilabel", [True, False])
def test_a_padded_fine_tuning_step_never_reads_a_value_from_the_device(monkeypatch, multilabel):
    """On fake tensors, which hold shapes but no values, anything that needs a value on the host (a host-device
    sync on a GPU) raises. Jitter, time masks, mixup, both passes of the consistency loss and the backward pass."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from fairseq_logmel_conformer.criterions import logmel_consistency

    # On the CPU the criterion reads the loss to report a non-finite one: free there, skipped on a GPU.
    monkeypatch.setattr(logmel_consistency, "report_nonfinite_loss", lambda *args: False)
    model = classifier(multilabel=multilabel).train()
    criterion = LogmelConsistencyCriterion(LogmelConsistencyConfig(consistency_weight=2.0), _Task(multilabel))
    with FakeTensorMode(allow_non_fake_inputs=True):
        source = torch.randn(3, 32000)
        padding_mask = torch.arange(32000)[None, :] >= torch.tensor([32000, 24000, 9000])[:, None]
        target = torch.eye(3)
        loss, sample_size, _ = criterion(model, {"net_input": {"source": source, "padding_mask": padding_mask}, "target": target, "id": torch.arange(3)})
        loss.backward()
    assert loss.shape == () and sample_size == 3


def test_eval_pass_hands_scores_to_the_task():
    model = classifier().eval()
    target = torch.tensor([[1.0, 0, 1.0]])
    sample = {"net_input": {"source": torch.randn(1, 16000), "padding_mask": None}, "target": target, "id": torch.tensor([7])}
    _, _, log = LogmelConsistencyCriterion(LogmelConsistencyConfig(), _Task(True))(model, sample)
    torch.testing.assert_close(log["_scores"], model.predict(sample["net_input"]["source"]))
    assert log["_targets"] is target


# ---- datasets and split-level metrics --------------------------------------------------------------------


@pytest.fixture
def labelled_audio(labelled_corpus):
    vocab = LabelVocabulary.read(os.path.join(labelled_corpus, "labels.txt"))
    audio = ManifestAudioDataset(os.path.join(labelled_corpus, "train.tsv"), 16000, max_sample_size=16000)
    labels = read_label_file(os.path.join(labelled_corpus, "train.labels"), vocab, 20, single_label=True)
    return audio, labels


def test_batches_carry_multi_hot_targets_aligned_with_the_clips(labelled_audio):
    audio, labels = labelled_audio
    dataset = LabelledAudioDataset(audio, labels, 5)
    batch = dataset.collater([dataset[i] for i in (3, 0, 7)])
    assert batch["target"].shape == (3, 5)
    assert [row.nonzero().flatten().tolist() for row in batch["target"]] == [labels[3], labels[0], labels[7]]
    assert batch["net_input"]["source"].shape[1] <= 16000


def test_label_fraction_and_balanced_epochs(labelled_audio):
    audio, labels = labelled_audio
    subset = LabelledAudioDataset(audio, labels, 5, fraction=0.25, seed=3)
    assert len(subset) == 5 and sorted({c for clip in subset.labels for c in clip}) == [0, 1, 2, 3, 4]
    again = LabelledAudioDataset(audio, labels, 5, fraction=0.25, seed=3)
    np.testing.assert_array_equal(subset.positions, again.positions)
    balanced = LabelledAudioDataset(audio, labels, 5, balanced=True, seed=1)
    assert not balanced.can_reuse_epoch_itr_across_epochs
    balanced.set_epoch(1)
    first = balanced.ordered_indices()
    balanced.set_epoch(2)
    assert len(first) == len(balanced) and not np.array_equal(np.sort(first), np.sort(balanced.ordered_indices()))


def test_clip_score_meter_counts_each_clip_once_and_matches_compute_metrics():
    rng = np.random.default_rng(0)
    scores, targets = rng.random((12, 4)).astype(np.float32), (rng.random((12, 4)) > 0.5).astype(np.float32)
    meter = ClipScoreMeter(multilabel=True)
    meter.update(torch.arange(8), torch.tensor(scores[:8]), torch.tensor(targets[:8]))
    meter.update(torch.arange(8, 12), torch.tensor(scores[8:]), torch.tensor(targets[8:]))
    meter.update(torch.arange(2), torch.tensor(scores[:2]), torch.tensor(targets[:2]))  # fairseq's padding batch
    assert meter.smoothed_value == 12
    assert meter.metrics() == pytest.approx(compute_metrics(scores, targets, multilabel=True))


def test_batches_count_long_clips_at_their_cropped_length(labelled_audio):
    audio, _ = labelled_audio
    long_clip = int(audio.sizes.argmax())
    assert audio.sizes[long_clip] > audio.max_sample_size
    assert audio.num_tokens(long_clip) == audio.size(long_clip) == audio.max_sample_size
    batches = audio.batch_by_size(audio.ordered_indices(), max_tokens=4 * audio.max_sample_size)
    assert max(len(b) for b in batches) == 4, "four cropped clips fit in a batch of four crops"


def test_unpadded_batches_carry_no_padding_mask(labelled_audio):
    audio, _ = labelled_audio
    equal = audio.collater([audio[i] for i in range(3)])  # every clip is cropped to max_sample_size
    assert equal["net_input"]["padding_mask"] is None
    audio.max_sample_size = 10 ** 9
    try:
        mixed = audio.collater([audio[i] for i in range(3)])
    finally:
        audio.max_sample_size = 16000
    assert mixed["net_input"]["padding_mask"].any()


def test_bucketed_batches_are_padded_to_one_of_the_bucket_lengths(labelled_corpus):
    audio = ManifestAudioDataset(os.path.join(labelled_corpus, "train.tsv"), 16000, max_sample_size=40000, num_buckets=3)
    assert 1 <= len(audio.buckets) <= 3 and audio.buckets[-1] == min(audio.sizes.max(), 40000)
    lengths = set()
    for batch_indices in audio.batch_by_size(audio.ordered_indices(), max_tokens=80000):
        batch = audio.collater([audio[i] for i in batch_indices])
        source, padding_mask = batch["net_input"]["source"], batch["net_input"]["padding_mask"]
        lengths.add(source.shape[1])
        valid = [min(int(audio.sizes[i]), 40000) for i in batch["id"].tolist()]
        if padding_mask is None:
            assert set(valid) == {source.shape[1]}
        else:
            assert (~padding_mask).sum(1).tolist() == valid
    assert lengths <= set(audio.buckets.tolist())

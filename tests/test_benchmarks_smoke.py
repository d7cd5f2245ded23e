"""The benchmarks compare like with like: fairseq's trainer path and the bare loop take the same update."""
import argparse
import json
import os
import re
import shutil
import traceback

import pytest
import torch

from benchmarks.common import (
    REPOSITORY,
    TrainingRunner,
    count_step_flops,
    error_line,
    load_config,
    profile_step,
    time_by_name,
    write_corpus,
)


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("bench_corpus"))
    write_corpus(folder, num_clips=2, seconds=1.0)
    os.makedirs(os.path.join(folder, "checkpoints"))
    return folder


def test_trainer_and_bare_loop_take_the_same_update(two_clips):
    trainer = TrainingRunner("tiny", "trainer", "cpu", "fp32", two_clips, num_clips=2, clip_samples=16000)
    bare = TrainingRunner("tiny", "bare", "cpu", "fp32", two_clips, num_clips=2, clip_samples=16000, lr=trainer.trainer.get_lr())
    before = {n: p.detach().clone() for n, p in bare.model.named_parameters()}
    for name, p in trainer.model.named_parameters():
        torch.testing.assert_close(p, before[name], msg=f"{name} starts differently")

    # fairseq's warm-up gives the first update a learning rate of 0, so compare after the second one.
    for update in range(2):
        bare.bare.set_lr(trainer.trainer.get_lr())
        trainer.step()
        # fairseq seeds each update with common.seed + num_updates; the bare loop gets the same seed (masks, dropout).
        torch.manual_seed(trainer.cfg.common.seed + update)
        bare.step()

    trainer_params = dict(trainer.model.named_parameters())
    bare_step, trainer_step = [], []
    for name, p in bare.model.named_parameters():
        reference = trainer_params[name]
        # Same loss, masks and dropout, normalised by the sample size and clipped alike: the same gradients.
        torch.testing.assert_close(p.grad, reference.grad, rtol=1e-4, atol=1e-6, msg=f"{name}: gradients differ")
        bare_step.append((p - before[name]).flatten())
        trainer_step.append((reference - before[name]).flatten())
    bare_step, trainer_step = torch.cat(bare_step), torch.cat(trainer_step)
    assert trainer_step.abs().max() > 0, "the trainer left every parameter unchanged"
    # Both take torch's AdamW update (the configs' logmel_adamw in the trainer), so the steps differ only as much
    # as the gradients' rounding, which Adam's normalisation passes on (3e-4 here; 6e-3 with fairseq's adam).
    relative_difference = (bare_step - trainer_step).norm() / trainer_step.norm()
    assert relative_difference < 1e-3, f"updates differ by {relative_difference:.2e} (relative L2)"


def test_throughput_configurations_take_their_own_overrides_and_count_their_dispatched_operations(tmp_path, two_clips):
    from benchmarks import bench_train_throughput

    output = tmp_path / "throughput.json"
    efficient = "tiny_trainer:common.memory_efficient_bf16=true"
    bench_train_throughput.main([
        "--configs", f"tiny_trainer,{efficient},tiny_bare", "--precision", "bf16", "--clips", "2", "--seconds", "1",
        "--reps", "1", "--steps", "1", "--threads", "1", "--output", str(output),
    ])
    payload = json.loads(output.read_text())
    results, configs = payload["results"], payload["results"]["configs"]
    # Every result names the code that produced it (outside a git checkout there is none to name).
    in_checkout = os.path.exists(os.path.join(REPOSITORY, ".git"))
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+changes)?", payload["commit"]) if in_checkout else payload["commit"] is None
    assert configs[efficient]["overrides"] == ["common.memory_efficient_bf16=true"] and configs["tiny_trainer"]["overrides"] == []
    # fairseq's bf16 optimizer copies in, copies out and zeroes each parameter; logmel_adamw does each in one operation.
    parameters = len(list(TrainingRunner("tiny", "bare", "cpu", "fp32", two_clips, num_clips=2, clip_samples=16000).model.parameters()))
    saved = configs["tiny_trainer"]["dispatched_ops_per_step"] - configs[efficient]["dispatched_ops_per_step"]
    assert 3 * parameters - 4 <= saved <= 3 * parameters, f"{saved} fewer operations for {parameters} parameter tensors"
    assert set(results["ratios"]) == {"tiny_trainer_overhead", f"{efficient}_overhead"}
    with pytest.raises(argparse.ArgumentTypeError, match="not MODEL_trainer or MODEL_bare"):
        bench_train_throughput.parse_config("tiny_trainer:memory_efficient")


def test_flop_count_charges_depthwise_backward_like_its_forward():
    conv = torch.nn.Conv1d(32, 32, 5, padding=2, groups=32)
    x = torch.randn(2, 32, 50, requires_grad=True)
    counted = count_step_flops(lambda: conv(x).sum().backward())
    forward = 2 * 2 * 50 * 32 * 5  # multiply-adds of a depthwise kernel: batch * length * channels * kernel
    assert counted["flops_by_op"]["aten.convolution"] == forward
    assert counted["flops_per_step"] == 3 * forward


def test_step_profile_names_the_attention_path_and_ranks_where_the_time_goes():
    matrix, query = torch.randn(384, 384), torch.randn(1, 2, 16, 8)

    def step():
        for _ in range(20):
            matrix @ matrix
        torch.nn.functional.scaled_dot_product_attention(query, query, query)
        matrix + 1

    profiled = profile_step(step, "cpu", top=3)
    top = profiled["time_by_kernel"]["top"]
    assert [k["name"] for k in top][0] == "aten::mm" and top[0]["calls"] == 20 and top[0]["share"] > 0.5
    assert len(top) == 3 and sum(k["share"] for k in top) <= 1 + 1e-9
    assert top[0]["ms"] <= profiled["time_by_kernel"]["total_ms"]
    assert any("scaled_dot_product" in name for name in profiled["attention_ops"])


def test_gpu_time_counts_kernels_once_not_the_ranges_around_them():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(name, microseconds, device=DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(elapsed_us=lambda: microseconds)
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation, time_range=span, self_cpu_time_total=0)

    # fairseq's "forward" range spans the kernels it launched on the GPU timeline; the CPU side of an op is not GPU time.
    events = [event("forward", 100.0, annotation=True), event("gemm", 60.0), event("gemm", 20.0), event("layer_norm", 20.0),
              event("aten::mm", 500.0, device=DeviceType.CPU)]
    timed = time_by_name(events, "cuda", top=5)
    assert timed["total_ms"] == pytest.approx(0.1)
    assert [(k["name"], k["calls"], k["share"]) for k in timed["top"]] == [("gemm", 2, pytest.approx(0.8)), ("layer_norm", 1, pytest.approx(0.2))]


def test_wav2vec2_references_keep_fairseq_base_settings(two_clips):
    base = load_config("w2v2_base", [f"task.data={two_clips}"])
    conformer = load_config("w2v2_conformer", [f"task.data={two_clips}"])
    for cfg in (base, conformer):
        assert (cfg.model.encoder_layers, cfg.model.encoder_embed_dim) == (12, 768)
        assert cfg.model.quantize_targets and cfg.criterion.infonce
        assert list(cfg.criterion.loss_weights) == [0.1, 10.0]
    assert base.model.layer_type == "transformer"
    assert (conformer.model.layer_type, conformer.model.pos_enc_type) == ("conformer", "rel_pos")


def test_esc_benchmark_pretraining_audio_leaves_every_esc10_clip_out(tmp_path):
    from benchmarks.esc50_pretrain_vs_scratch import parse_args, pretraining_audio_dir
    from fairseq_logmel_conformer.cli.make_manifest import main as make_manifest
    from test_prepare import make_esc50

    rows, _ = make_esc50(str(tmp_path / "esc50"), missing=())
    write_corpus(str(tmp_path / "unlabeled"), num_clips=3, seconds=1.0)
    common = ["--esc50-dir", str(tmp_path / "esc50"), "--unlabeled-dir", str(tmp_path / "unlabeled"), "--work-dir", str(tmp_path / "work")]
    args = parse_args(common + ["--pretrain-audio", "unlabeled+esc50-other"])
    assert make_manifest([pretraining_audio_dir(args), "--dest", str(tmp_path / "manifest"), "--valid-percent", "0", "--jobs", "1"]) == 0
    with open(tmp_path / "manifest" / "train.tsv") as f:
        listed = sorted(line.split("\t")[0] for line in f.read().splitlines()[1:])
    outside_esc10 = sorted(f"esc50_other/{name}" for name, _, _, _, is_esc10, _, _ in rows if not is_esc10)
    assert [path for path in listed if path.startswith("esc50_other/")] == outside_esc10
    assert len([path for path in listed if path.startswith("unlabeled/")]) == 3
    assert parse_args(common).pretrain_audio == "unlabeled" and pretraining_audio_dir(parse_args(common)) == str(tmp_path / "unlabeled")
    with pytest.raises(SystemExit):
        parse_args(common + ["--pretrain-audio", "unlabeled+esc50-other", "--subset", "esc50"])


def test_esc_benchmark_pretrains_on_several_unlabelled_folders_and_names_them(tmp_path):
    from benchmarks.esc50_pretrain_vs_scratch import finetune_dir, parse_args, pretraining_audio_dir, same_results_setting
    from fairseq_logmel_conformer.cli.make_manifest import main as make_manifest

    for name, count in (("unlabeled", 3), ("unlabeled_sfx", 2)):
        write_corpus(str(tmp_path / name), num_clips=count, seconds=1.0)
    common = ["--esc50-dir", str(tmp_path / "esc50"), "--work-dir", str(tmp_path / "work")]
    one = parse_args(common + ["--unlabeled-dir", str(tmp_path / "unlabeled")])
    both = parse_args(common + ["--unlabeled-dir", str(tmp_path / "unlabeled"), str(tmp_path / "unlabeled_sfx")])
    audio = pretraining_audio_dir(both)
    assert os.path.basename(audio) == "unlabeled+unlabeled_sfx"
    assert make_manifest([audio, "--dest", str(tmp_path / "manifest"), "--valid-percent", "0", "--jobs", "1"]) == 0
    with open(tmp_path / "manifest" / "train.tsv") as f:
        assert len(f.read().splitlines()) == 1 + 3 + 2
    # Other audio: another pre-training, other pre-trained runs, the same scratch runs, never the same results file.
    assert finetune_dir(one, 1, 1, "pretrained") != finetune_dir(both, 1, 1, "pretrained")
    assert finetune_dir(one, 1, 1, "scratch") == finetune_dir(both, 1, 1, "scratch")
    assert not same_results_setting(vars(one), vars(both))


@pytest.mark.parametrize("subset, folds, added_folds", [("esc50", ["1", "2", "3"], (4, 5)), ("esc10", ["2"], (1, 3, 4, 5))])
def test_esc_benchmark_training_fold_audio_leaves_every_evaluated_fold_out(tmp_path, subset, folds, added_folds):
    from benchmarks.esc50_pretrain_vs_scratch import parse_args, pretraining_audio_dir
    from benchmarks.esc50_report import pretraining_audio_text
    from fairseq_logmel_conformer.cli.make_manifest import main as make_manifest
    from test_prepare import make_esc50

    rows, _ = make_esc50(str(tmp_path / "esc50"), missing=())
    write_corpus(str(tmp_path / "unlabeled"), num_clips=3, seconds=1.0)
    common = ["--esc50-dir", str(tmp_path / "esc50"), "--unlabeled-dir", str(tmp_path / "unlabeled"), "--work-dir", str(tmp_path / "work")]
    args = parse_args(common + ["--pretrain-audio", "unlabeled+training-folds", "--subset", subset, "--folds", *folds])
    audio = pretraining_audio_dir(args)
    assert os.path.basename(audio) == f"unlabeled+{subset}-folds{''.join(map(str, added_folds))}"
    assert make_manifest([audio, "--dest", str(tmp_path / "manifest"), "--valid-percent", "0", "--jobs", "1"]) == 0
    with open(tmp_path / "manifest" / "train.tsv") as f:
        listed = sorted(line.split("\t")[0] for line in f.read().splitlines()[1:])
    added = f"{subset}_folds{''.join(map(str, added_folds))}"
    in_subset = [(name, fold) for name, fold, _, _, is_esc10, _, _ in rows if is_esc10 or subset == "esc50"]
    assert [path for path in listed if not path.startswith("unlabeled/")] == sorted(f"{added}/{name}" for name, fold in in_subset if fold in added_folds)
    assert len([path for path in listed if path.startswith("unlabeled/")]) == 3
    assert f"{subset.upper().replace('ESC', 'ESC-')} clips of fold(s) {', '.join(map(str, added_folds))}," in pretraining_audio_text(vars(args))
    with pytest.raises(SystemExit):
        parse_args(common + ["--pretrain-audio", "unlabeled+training-folds", "--folds", "1", "2", "3", "4", "5"])


def test_esc_benchmark_pretraining_fraction_keeps_nested_shares_of_the_duration_and_the_same_valid_clips(tmp_path):
    from benchmarks.esc50_pretrain_vs_scratch import manifest_hours, parse_args, subset_manifest
    from fairseq_logmel_conformer.data.manifest import write_manifest
    from fairseq_logmel_conformer.data.manifest import read_manifest

    clip_samples = [16000 * (1 + i % 7) for i in range(40)]
    source = tmp_path / "full"
    source.mkdir()
    write_manifest(str(source / "train.tsv"), "/audio", [(f"clip{i}.wav", n) for i, n in enumerate(clip_samples)])
    write_manifest(str(source / "valid.tsv"), "/audio", [("held_out.wav", 16000)])
    full_hours, longest_clip_hours = manifest_hours(str(source)), max(clip_samples) / 16000 / 3600
    kept = {}
    for fraction in (0.25, 0.5, 1.0):
        subset = subset_manifest(str(source), fraction, str(tmp_path / f"frac{fraction}"))
        kept[fraction] = set(read_manifest(os.path.join(subset, "train.tsv")).files)
        assert fraction * full_hours <= manifest_hours(subset) < fraction * full_hours + longest_clip_hours
        assert (tmp_path / f"frac{fraction}" / "valid.tsv").read_text() == (source / "valid.tsv").read_text()
    assert kept[0.25] < kept[0.5] < kept[1.0] == {f"clip{i}.wav" for i in range(40)}
    common = ["--esc50-dir", "esc50", "--unlabeled-dir", "unlabeled", "--work-dir", str(tmp_path)]
    for fraction in ("0", "1.5"):
        with pytest.raises(SystemExit):
            parse_args(common + ["--pretrain-fraction", fraction])


def test_esc_benchmark_runs_with_different_seeds_or_settings_never_share_a_folder(tmp_path):
    from benchmarks.esc50_pretrain_vs_scratch import finetune_command, finetune_dir, parse_args, pretrain_command

    common = ["--esc50-dir", "esc50", "--unlabeled-dir", "unlabeled", "--work-dir", str(tmp_path)]
    args = parse_args(common + ["--finetune-seeds", "1", "2"])
    assert args.finetune_seeds == [1, 2] and parse_args(common + ["--seed", "3"]).finetune_seeds == [3]
    changes_every_run = [[], ["--subset", "esc50"], ["--config", "cfS"], ["--model-override", "feature_norm=layer"], ["--finetune-updates", "20"], ["--finetune-train-fraction", "0.25"], ["--finetune-override", "criterion.consistency_weight=0"], ["--precision", "bf16"]]
    changes_pretraining_only = [["--seed", "2"], ["--pretrain-updates", "20"], ["--pretrain-minutes", "20"], ["--pretrain-override", "criterion.temperature=0.2"], ["--pretrain-audio", "unlabeled+esc50-other"], ["--pretrain-audio", "unlabeled+training-folds"], ["--pretrain-fraction", "0.5"]]
    for arm in ("pretrained", "scratch"):
        variants = [finetune_dir(args, 1, 2, arm), finetune_dir(args, 2, 1, arm)]
        variants += [finetune_dir(parse_args(common + change), 1, 1, arm) for change in changes_every_run]
        assert len(set(variants)) == len(variants), arm
    pretrained = [finetune_dir(parse_args(common + change), 1, 1, "pretrained") for change in [[]] + changes_pretraining_only]
    assert len(set(pretrained)) == len(pretrained)
    # Scratch runs never see the pre-training, so every pre-training setting is compared with the same ones.
    scratch = {finetune_dir(parse_args(common + change), 1, 1, "scratch") for change in [[]] + changes_pretraining_only}
    assert scratch == {finetune_dir(args, 1, 1, "scratch")}
    assert finetune_dir(args, 1, 1, "scratch") not in pretrained
    # Which folds pre-training adds depends on --folds: fold 1 evaluated alone or beside fold 2 pre-trains on different audio.
    training_folds = [parse_args(common + ["--pretrain-audio", "unlabeled+training-folds", "--folds", *folds]) for folds in (["1"], ["1", "2"])]
    assert finetune_dir(training_folds[0], 1, 1, "pretrained") != finetune_dir(training_folds[1], 1, 1, "pretrained")
    # How the checkpoint loads and trains changes nothing from scratch: one scratch run serves every value.
    changes_loading_only = [["--finetune-override", "model.reinit_last_blocks=2"], ["--finetune-override", "model.reinit_last_blocks=1"]]
    assert len({finetune_dir(parse_args(common + change), 1, 1, "pretrained") for change in [[]] + changes_loading_only}) == 3
    assert {finetune_dir(parse_args(common + change), 1, 1, "scratch") for change in changes_loading_only} == {finetune_dir(args, 1, 1, "scratch")}
    command = finetune_command(args, "fold1", str(tmp_path / "run"), None, seed=2)
    assert "common.seed=2" in command and "+encoder=small" in command
    fewer_labels = parse_args(common + ["--finetune-train-fraction", "0.25"])
    assert all("task.train_fraction=0.25" in finetune_command(fewer_labels, "fold1", "run", checkpoint, seed=1) for checkpoint in (None, "checkpoint.pt"))
    with pytest.raises(SystemExit):
        parse_args(common + ["--finetune-train-fraction", "0"])
    mixed = parse_args(common + ["--finetune-override", "criterion.consistency_weight=0", "model.reinit_last_blocks=2"])
    assert finetune_command(mixed, "fold1", "run", "checkpoint.pt", seed=1)[-2:] == ["criterion.consistency_weight=0", "model.reinit_last_blocks=2"]
    assert finetune_command(mixed, "fold1", "run", None, seed=1)[-1] == "criterion.consistency_weight=0"
    assert finetune_dir(mixed, 1, 1, "scratch") == finetune_dir(parse_args(common + ["--finetune-override", "criterion.consistency_weight=0"]), 1, 1, "scratch")
    # Device and precision are the same in pre-training and both arms.
    gpu = parse_args(common + ["--device", "cuda", "--precision", "bf16"])
    for gpu_command in (pretrain_command(gpu, "manifests", "out"), *(finetune_command(gpu, "fold1", "run", c, seed=1) for c in (None, "checkpoint.pt"))):
        assert {"common.cpu=False", "common.bf16=True", "common.fp16=False"} <= set(gpu_command)
    assert "common.cpu=True" in command and "common.bf16=False" in command
    with pytest.raises(SystemExit):
        parse_args(common + ["--jobs", "0"])
    # An architecture change reaches both arms: pre-training and scratch set it, the pre-trained arm inherits it.
    changed = parse_args(common + ["--model-override", "feature_norm=layer"])
    assert "++model.feature_norm=layer" in pretrain_command(changed, "manifests", "out")
    assert "++model.encoder.feature_norm=layer" in finetune_command(changed, "fold1", "run", None, seed=1)
    assert not any("feature_norm" in part for part in finetune_command(changed, "fold1", "run", "checkpoint.pt", seed=1))
    # The configs' own normalisation, given or not, is one setting.
    assert finetune_dir(parse_args(common + ["--model-override", "feature_norm=global"]), 1, 1, "scratch") == finetune_dir(args, 1, 1, "scratch")


def test_esc_benchmark_results_of_another_setting_are_never_overwritten(tmp_path):
    from benchmarks.common import STUDIES, results_dir
    from benchmarks.esc50_pretrain_vs_scratch import parse_args, results_base

    for benchmark in STUDIES:
        assert os.path.isdir(os.path.dirname(results_dir(benchmark))), f"{benchmark} writes to a study folder that does not exist"
    common = ["--esc50-dir", "esc50", "--unlabeled-dir", "unlabeled", "--work-dir", str(tmp_path / "work"), "--results-dir", str(tmp_path)]

    def settings(*flags):
        args = parse_args(common + list(flags))
        return args, {**vars(args), "total_wall_s": 1.0}

    def finish(base, recorded):
        with open(base + ".json", "w") as f:
            json.dump({"settings": recorded}, f)

    args, first = settings("--subset", "esc50", "--config", "cfS", "--folds", "1", "2")
    assert results_base(args, first) == str(tmp_path / "esc50_cfS_folds12")
    finish(results_base(args, first), first)
    # A rerun of the same setting on another machine layout replaces its own results...
    args, rerun = settings("--subset", "esc50", "--config", "cfS", "--folds", "1", "2", "--jobs", "4", "--threads", "2")
    assert results_base(args, rerun) == str(tmp_path / "esc50_cfS_folds12")
    # ...a setting that changes the numbers gets the next free number, and so does a third one.
    args, other = settings("--subset", "esc50", "--config", "cfS", "--folds", "1", "2", "--finetune-override", "model.reinit_last_blocks=2")
    assert results_base(args, other) == str(tmp_path / "esc50_cfS_folds12_2")
    finish(results_base(args, other), other)
    args, third = settings("--subset", "esc50", "--config", "cfS", "--folds", "1", "2", "--seed", "2")
    assert results_base(args, third) == str(tmp_path / "esc50_cfS_folds12_3")
    args, named = settings("--name", "reinit2", "--folds", "1", "2")
    assert results_base(args, named) == str(tmp_path / "reinit2")


def test_esc_benchmark_runs_every_fold_seed_and_arm_once_and_files_each_result_under_its_own_run(tmp_path, monkeypatch):
    from benchmarks import esc50_pretrain_vs_scratch as bench

    calls = []

    def fake_run(args, fold, seed, arm, fold_dir, pretrained):
        calls.append((fold, seed, arm))
        return {"fold": fold, "seed": seed, "arm": arm, "data": fold_dir}

    monkeypatch.setattr(bench, "finetune_and_evaluate", fake_run)
    args = bench.parse_args(["--esc50-dir", "e", "--unlabeled-dir", "u", "--work-dir", str(tmp_path), "--folds", "2", "5", "--finetune-seeds", "1", "3", "--jobs", "3"])
    runs = bench.finetune_all(args, {2: "fold2_dir", 5: "fold5_dir"}, "checkpoint.pt")
    assert sorted(calls) == sorted((fold, seed, arm) for fold in (2, 5) for seed in (1, 3) for arm in ("pretrained", "scratch"))
    assert list(runs) == ["fold2 seed1", "fold5 seed1", "fold2 seed3", "fold5 seed3"]
    for name, arms in runs.items():
        fold, seed = int(name[4]), int(name[-1])
        assert {arm: (r["fold"], r["seed"], r["arm"], r["data"]) for arm, r in arms.items()} == {
            arm: (fold, seed, arm, f"fold{fold}_dir") for arm in ("pretrained", "scratch")
        }


def test_linear_probe_over_folds_matches_each_fold_alone_and_rejects_mixed_lengths(tmp_path, pretrained_checkpoint):
    from benchmarks import esc50_linear_probe
    from conftest import write_labelled_corpus

    # Two folds over the same clips with train and valid swapped, as cross-validation folds share clips.
    fold_a = write_labelled_corpus(str(tmp_path / "fold_a"), num_train=12, num_valid=12, seconds=(2.0, 2.0))
    fold_b = str(tmp_path / "fold_b")
    os.makedirs(fold_b)
    for name in ("labels.txt",) + tuple(f"{split}.{ext}" for split in ("train", "valid") for ext in ("tsv", "labels")):
        swapped = name.replace("train", "VALID").replace("valid", "train").replace("VALID", "valid")
        shutil.copy(os.path.join(fold_a, name), os.path.join(fold_b, swapped))

    def probe(*folds):
        out = str(tmp_path / f"probe_{len(folds)}.json")
        assert esc50_linear_probe.main([pretrained_checkpoint, *folds, "--out", out]) == 0
        with open(out) as f:
            return json.load(f)

    both, alone = probe(fold_a, fold_b), probe(fold_b)
    assert both["benchmark"] == "esc50_linear_probe" and both["command"].endswith("--out " + str(tmp_path / "probe_2.json"))
    for arm in ("pretrained", "random_init"):
        per_fold = both[arm]["valid_accuracy_per_layer_per_fold"]
        assert len(per_fold) == 2 and len(per_fold[0]) == len(both["layers"]) == 3  # latent Z + 2 tiny blocks
        assert per_fold[1] == pytest.approx(alone[arm]["valid_accuracy_per_layer"])
        assert both[arm]["valid_accuracy_per_layer"] == pytest.approx([(a + b) / 2 for a, b in zip(*per_fold)])
    # Pre-trained and random weights give different features, so the two arms cannot be one model twice.
    assert both["pretrained"]["last_layer_std_across_clips"] != pytest.approx(both["random_init"]["last_layer_std_across_clips"])
    reference = both["logmel_statistics"]
    assert reference["valid_accuracy_per_fold"][1] == pytest.approx(alone["logmel_statistics"]["valid_accuracy"])
    assert reference["valid_accuracy"] == pytest.approx(sum(reference["valid_accuracy_per_fold"]) / 2)
    # Tones, chirps, noise bursts, clicks and tremolo differ in spectrum and envelope: bag-of-frames
    # statistics separate them far above chance (0.2), unless the rows and labels were misaligned.
    assert min(reference["valid_accuracy_per_fold"]) >= 0.75

    mixed = write_labelled_corpus(str(tmp_path / "mixed"), num_train=6, num_valid=4, seconds=(1.0, 3.0))
    with pytest.raises(ValueError, match=r"clips of one length: .*\.wav has \d+ samples"):
        esc50_linear_probe.main([pretrained_checkpoint, mixed])


def test_esc_curves_report_averages_the_updates_every_run_validated(tmp_path):
    from benchmarks import esc50_report

    def write_log(path, records):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            for logger, record in records:
                f.write(f"[2026-01-01 00:00:00,000][{logger}][INFO] - {json.dumps(record)}\n")

    def valid(update, accuracy):
        return ("valid", {"valid_num_updates": str(update), "valid_accuracy": str(accuracy), "valid_loss": "1.0"})

    write_log(str(tmp_path / "pretraining.log"), [("train_inner", {"num_updates": "10", "accuracy": "0.2", "loss": "3"}), valid(10, 0.25)])
    # fold2 was cut before its second validation: update 100 is left out of the table.
    accuracies = {("fold1", "pretrained"): [0.5, 0.7], ("fold1", "scratch"): [0.4, 0.6], ("fold2", "pretrained"): [0.3], ("fold2", "scratch"): [0.4]}
    for (fold, arm), values in accuracies.items():
        write_log(str(tmp_path / fold / f"{arm}.log"), [valid(50 * (i + 1), v) for i, v in enumerate(values)])
    assert esc50_report.main([str(tmp_path), "--title", "test"]) == 0
    rows = [line for line in (tmp_path / "curves.md").read_text().splitlines() if line.startswith("| 50 ") or line.startswith("| 100 ")]
    assert rows == ["| 50 | 40.0 | 40.0 | +0.0 | +10.0 -10.0 |"]
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_esc_benchmark_training_time_of_a_resumed_run_counts_every_process(tmp_path):
    from benchmarks.esc50_pretrain_vs_scratch import training_seconds

    log = tmp_path / "run" / "hydra_train.log"
    os.makedirs(log.parent)

    def epoch_end(wall):
        return f'[2026-01-01 00:00:00,000][train][INFO] - {{"epoch": 1, "train_train_wall": "1", "train_wall": "{wall}"}}\n'

    # The first process was killed after its checkpoint at 100 s; the second resumed with fairseq's wall meter
    # restored from that checkpoint and ran 30 s more.
    log.write_text(epoch_end(100) + "[fairseq.trainer][INFO] - Preparing to load checkpoint\n")
    assert training_seconds(str(tmp_path)) is None, "an unfinished run has no training time"
    with open(log, "a") as f:
        f.write(epoch_end(130) + "[fairseq_cli.train][INFO] - done training in 30.4 seconds\n")
    assert training_seconds(str(tmp_path)) == 130.0


def test_throughput_ratios_pair_compiled_configurations_with_eager_ones_and_trainers_with_their_bare_loops():
    from benchmarks import bench_train_throughput

    compiled, graphs = "model.compile=true", "model.compile=true:model.compile_mode=reduce-overhead"
    names = [
        "cfL_trainer:common.memory_efficient_bf16=true", f"cfL_trainer:common.memory_efficient_bf16=true:{compiled}",
        f"cfL_trainer:common.memory_efficient_bf16=true:{graphs}", "cfL_bare", f"cfL_bare:{compiled}", "w2v2_base_trainer",
        "w2v2_base_trainer:common.memory_efficient_bf16=true",
    ]
    configs = {name: {"audio_s_per_s": float(10 + index)} for index, name in enumerate(names)}
    ratio = bench_train_throughput.ratios(configs)
    assert ratio[f"{names[1]}_over_eager"] == 11 / 10 and ratio[f"{names[2]}_over_eager"] == 12 / 10
    # The trainer's bare loop has the same model settings: fairseq's common.* aside.
    assert ratio[f"{names[0]}_overhead"] == 13 / 10 - 1 and ratio[f"{names[1]}_overhead"] == 14 / 11 - 1
    assert f"{names[2]}_overhead" not in ratio
    # wav2vec 2.0 base as its own config stands, when it is there, for the reference.
    assert ratio[f"{names[1]}_over_w2v2_base_trainer"] == 11 / 15
    checks = bench_train_throughput.targets(ratio, configs, clips=8)
    assert checks[f"{names[1]}_over_w2v2_base_trainer_at_least_3x"] == {"value": 11 / 15, "target": 3.0, "met": False}


def test_bench_settings_switch_the_worker_and_leave_hydras_overrides():
    from benchmarks.common import apply_bench_overrides
    from fairseq_logmel_conformer.modules import compile as compile_module, conformer

    try:
        rest = apply_bench_overrides(["model.compile=true", "bench.depthwise=conv", "bench.dynamic_batch=false"])
        assert rest == ["model.compile=true"]
        assert conformer.COMPILED_DEPTHWISE == "conv" and compile_module.DYNAMIC_BATCH is False
        with pytest.raises(ValueError, match="unknown benchmark setting"):
            apply_bench_overrides(["bench.nothing=1"])
    finally:
        conformer.COMPILED_DEPTHWISE, compile_module.DYNAMIC_BATCH = "shifted_sums", True


def test_carried_audio_decodes_to_flac_under_the_original_names_with_every_sample_and_the_metadata(tmp_path):
    """benchmarks.device_audio: what the GPU machine decodes has the clips' names, rates and lengths, sounds like them
    (Opus is lossy: the error is checked, not equality), keeps the metadata, and names what it could not encode."""
    import numpy as np
    import soundfile as sf

    from benchmarks.device_audio import decode_folder, encode_folder

    src, encoded, decoded = (str(tmp_path / name) for name in ("src", "encoded", "decoded"))
    os.makedirs(os.path.join(src, "audio"))
    rng = np.random.default_rng(0)
    t = np.arange(16000 * 2) / 16000
    clips = {"audio/1-1-A-0.flac": np.sin(2 * np.pi * 440 * t), "audio/tone.wav": np.sin(2 * np.pi * 1000 * t[:24000])}
    for name, samples in clips.items():
        sf.write(os.path.join(src, name), 0.5 * samples + 0.01 * rng.standard_normal(len(samples)), 16000)
    sf.write(os.path.join(src, "audio/cd.wav"), np.zeros(4410), 44100)
    with open(os.path.join(src, "sources.csv"), "w") as f:
        f.write("file,licence\n")

    problems = encode_folder(src, encoded)
    assert len(problems) == 1 and "cd.wav: 44100 Hz" in problems[0]
    assert decode_folder(encoded, decoded) == []
    assert sorted(os.listdir(os.path.join(decoded, "audio"))) == ["1-1-A-0.flac", "tone.flac"]
    assert open(os.path.join(decoded, "sources.csv")).read() == "file,licence\n"
    for name, restored in (("audio/1-1-A-0.flac", "audio/1-1-A-0.flac"), ("audio/tone.wav", "audio/tone.flac")):
        original, _ = sf.read(os.path.join(src, name))
        samples, rate = sf.read(os.path.join(decoded, restored))
        assert rate == 16000 and samples.shape == original.shape
        assert np.mean((samples - original) ** 2) < 0.05 * np.mean(original**2), name

    size = os.path.getsize(os.path.join(encoded, "audio/1-1-A-0.flac.opus.ogg"))
    assert size * 8 / 2 < 24000, "more than 24 kbit/s"
    mtime = os.path.getmtime(os.path.join(decoded, "audio/tone.flac"))
    assert decode_folder(encoded, decoded) == [] and os.path.getmtime(os.path.join(decoded, "audio/tone.flac")) == mtime


def test_esc_benchmark_runs_the_commands_as_modules_where_they_are_not_installed(tmp_path, monkeypatch):
    """On the GPU machine the package is on PYTHONPATH, not installed: no console scripts beside the interpreter."""
    import subprocess
    import sys

    from benchmarks import esc50_pretrain_vs_scratch as bench

    assert bench.console_command("logmel-manifest") == [os.path.join(bench.BIN_DIR, "logmel-manifest")]
    monkeypatch.setattr(bench, "BIN_DIR", str(tmp_path))
    for name in bench.COMMAND_MODULES:
        assert bench.console_command(name)[:2] == [sys.executable, "-m"]
    config = subprocess.run(
        [*bench.console_command("fairseq-hydra-train"), "--config-name", "pretrain_tiny", "task.data=/corpus", "--cfg", "job"],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )
    assert config.returncode == 0 and "data: /corpus" in config.stdout and "_name: logmel_conformer" in config.stdout
    for name in ("logmel-manifest", "logmel-evaluate"):
        usage = subprocess.run([*bench.console_command(name), "--help"], capture_output=True, text=True, timeout=300)
        assert usage.returncode == 0 and "usage:" in usage.stdout, name


def test_a_failed_configuration_is_reported_by_its_exception_not_by_the_tail_of_a_compiler_message():
    def compile_step():
        raise RuntimeError("CppCompileError: C++ compile error\n\nkernel.cpp:144:42: error: 'decltype' evaluates to 'float'\n      |   ^~~~")

    try:
        try:
            compile_step()
        except RuntimeError as error:
            raise ValueError("the step failed") from error
    except ValueError:
        chained = traceback.format_exc()
    assert error_line(chained) == "ValueError: the step failed"
    try:
        compile_step()
    except RuntimeError:
        message = traceback.format_exc()
    assert message.rstrip().endswith("^~~~")
    assert error_line(message) == "RuntimeError: CppCompileError: C++ compile error"
    assert error_line("killed\n") == "killed"


def test_checkpoint_geometry_reads_the_input_path_and_how_alike_the_clip_embeddings_are(tmp_path, monkeypatch, pretrained_checkpoint):
    from fairseq import checkpoint_utils
    from fairseq_logmel_conformer.data.synthetic import write_dataset

    from conftest import load_script

    residual_scale = load_script(os.path.join(REPOSITORY, "experiments", "esc50_pretrain_vs_scratch", "residual_scale.py"))
    audio = str(tmp_path / "audio")
    write_dataset(audio, num_clips=6, seconds=(1.0, 2.0), seed=3)
    output = str(tmp_path / "scales.json")
    monkeypatch.setattr("sys.argv", ["residual_scale.py", pretrained_checkpoint, "--audio-dir", audio, "--every", "1", "--seconds", "1", "--restart", "1", "--output", output])
    residual_scale.main()
    with open(output) as f:
        result = json.load(f)["results"][pretrained_checkpoint]

    weights = checkpoint_utils.load_checkpoint_to_cpu(pretrained_checkpoint)["model"]
    product = weights["context_encoder.proj_in.weight"] @ weights["feature_encoder.proj.weight"]
    expected = torch.linalg.svdvals(product)[:5].tolist()
    assert result["loaded"]["input_path"]["product"]["top"] == pytest.approx(expected, abs=2e-3)
    ranks = {"latent": min(weights["feature_encoder.proj.weight"].shape), "proj_in": min(weights["context_encoder.proj_in.weight"].shape), "product": min(product.shape)}
    for state in ("fresh", "loaded"):
        spectra = result[state]["input_path"]
        assert set(spectra) == set(ranks)
        for name, spectrum in spectra.items():
            assert spectrum["top"] == sorted(spectrum["top"], reverse=True)
            assert 1.0 <= spectrum["effective_rank"] <= ranks[name]
        assert -1.0 <= result[state]["clip_embeddings"]["mean_cosine"] <= 1.0
    assert set(result["loaded"]) >= {"clip_embeddings", "clip_embeddings_last_1_restarted", "blocks", "latent_rms"}
    assert result["fresh"]["input_path"] != result["loaded"]["input_path"]

    # Identical clips have identical embeddings: a cosine of 1 and nothing around their mean.
    model = residual_scale.LogmelConformerModel(residual_scale.LogmelConformerConfig(sample_rate=16000, encoder_dim=64, encoder_layers=1, encoder_heads=4, encoder_ffn_dim=128)).eval()
    clip = torch.randn(1, 16000)
    with torch.no_grad():
        same = residual_scale.clip_embeddings(model.extract_features(clip.repeat(3, 1))[0])
        assert same["mean_cosine"] == pytest.approx(1.0, abs=1e-3) and same["spread_rms"] == pytest.approx(0.0, abs=1e-3)
        assert residual_scale.clip_embeddings(model.extract_features(torch.randn(3, 16000))[0])["spread_rms"] > 0

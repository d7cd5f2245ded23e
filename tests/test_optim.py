"""logmel_adamw: fairseq's Adam update, fused, and its fp32 master weights under fairseq's half-precision wrappers."""
import pytest
import torch
from fairseq import utils
from fairseq.dataclass.configs import FairseqConfig
from fairseq.optim.adam import Adam
from fairseq.optim.fp16_optimizer import FP16Optimizer, MemoryEfficientFP16Optimizer
from omegaconf import OmegaConf

from benchmarks.common import DispatchedOps
from fairseq_logmel_conformer.optim.logmel_adamw import LogmelAdamW, LogmelAdamWConfig


def make_optimizer(params, **fields) -> LogmelAdamW:
    return LogmelAdamW(OmegaConf.structured(LogmelAdamWConfig(lr=[1e-2], **fields)), params)


def test_updates_like_fairseqs_adam_with_decoupled_weight_decay():
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    start = [p.detach().clone() for p in ours]
    optimizer = make_optimizer(ours)
    reference = Adam(theirs, lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    for _ in range(5):
        for a, b in zip(ours, theirs):
            a.grad = torch.randn_like(a)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    for a, b, s in zip(ours, theirs, start):
        # Five steps of lr 1e-2 move each weight by about 5e-2; the two differ only in where eps enters.
        assert (a - s).abs().mean() > 1e-2
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-4)


def test_is_fused_and_takes_fairseqs_learning_rate_schedule():
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = make_optimizer([param], weight_decay=0.0)
    assert optimizer.optimizer.defaults["fused"] and optimizer.supports_flat_params
    optimizer.set_lr(0.5)
    param.grad = torch.ones(3)
    optimizer.step()
    # Adam's first step moves each weight by lr (times sign of the gradient).
    torch.testing.assert_close(param.detach(), torch.full((3,), -0.5), rtol=0, atol=1e-5)


@pytest.mark.parametrize("max_norm", [0.0, 1.0, 1e6])
def test_clips_gradients_like_fairseq(max_norm):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7)), torch.nn.Parameter(torch.randn(2))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours[:2], theirs[:2]):
        a.grad = torch.randn_like(a)
        b.grad = a.grad.clone()
    halved = lambda norm: norm / 2  # stands in for fairseq's model-parallel reduction of the norm
    total = make_optimizer(ours).clip_grad_norm(max_norm, aggregate_norm_fn=halved)
    torch.testing.assert_close(total, utils.clip_grad_norm_(theirs, max_norm, aggregate_norm_fn=halved))
    assert total > 1.0
    for a, b in zip(ours[:2], theirs[:2]):
        torch.testing.assert_close(a.grad, b.grad)
    assert ours[2].grad is None


def test_clipping_without_gradients_reports_a_zero_norm_on_the_parameters_device():
    param = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    total = make_optimizer([param]).clip_grad_norm(1.0)
    assert total.item() == 0.0 and total.dtype == utils.clip_grad_norm_([param], 1.0).dtype == torch.float64


def test_rejects_betas_that_are_not_a_pair():
    with pytest.raises(ValueError, match=r"two values, got \[0.9\]"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], adam_betas=[0.9])


def half_precision_cfg(precision: str):
    """fairseq's full config with logmel_adamw, as the trainer hands it to its mixed-precision wrappers."""
    cfg = OmegaConf.structured(FairseqConfig())
    cfg.optimizer = OmegaConf.structured(LogmelAdamWConfig())
    cfg.optimizer._name = "logmel_adamw"
    cfg.optimization.lr = [1e-2]
    setattr(cfg.common, precision, True)
    # On the CPU fairseq's flat fp32 copy would ask for a CUDA device; the updates are the same either way.
    cfg.common.fp16_no_flatten_grads = True
    return cfg


def half_model(dtype: torch.dtype, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(6, 6) for _ in range(layers)))
    return model.to(dtype)


def train_updates(optimizer, model: torch.nn.Module, updates: int, clip_norm: float = 0.5):
    """What fairseq's Trainer does each update: zero, backward, divide by the sample size, clip, step."""
    torch.manual_seed(1)
    norms = []
    for _ in range(updates):
        optimizer.zero_grad()
        inputs = torch.randn(4, 6).to(next(model.parameters()).dtype)
        optimizer.backward(model(inputs).float().pow(2).sum())
        optimizer.multiply_grads(1 / 4)
        norms.append(optimizer.clip_grad_norm(clip_norm))
        optimizer.step()
    return torch.stack(norms)


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_memory_efficient_half_precision_updates_like_fairseqs_fp16_optimizer_to_the_bit(precision, dtype):
    ours, theirs = half_model(dtype), half_model(dtype)
    start = [p.detach().clone() for p in ours.parameters()]
    efficient = MemoryEfficientFP16Optimizer.build_optimizer(half_precision_cfg(precision), list(ours.parameters()))
    reference = FP16Optimizer.build_optimizer(half_precision_cfg(precision), list(theirs.parameters()))
    assert isinstance(efficient.wrapped_optimizer, LogmelAdamW)
    norms = train_updates(efficient, ours, updates=4)
    assert torch.equal(norms, train_updates(reference, theirs, updates=4))
    assert (norms > 0.5).all(), "every update clips"
    for a, b, s in zip(ours.parameters(), theirs.parameters(), start):
        assert a.dtype == dtype and torch.equal(a, b) and not torch.equal(a, s)


def test_half_precision_update_dispatches_as_many_operations_for_100_layers_as_for_2():
    counts = {}
    for wrapper in (MemoryEfficientFP16Optimizer, FP16Optimizer):
        for layers in (2, 100):
            model = half_model(torch.bfloat16, layers)
            optimizer = wrapper.build_optimizer(half_precision_cfg("bf16"), list(model.parameters()))
            train_updates(optimizer, model, updates=1)
            optimizer.zero_grad()
            optimizer.backward(model(torch.randn(4, 6, dtype=torch.bfloat16)).float().pow(2).sum())
            with DispatchedOps() as ops:
                optimizer.multiply_grads(1 / 4)
                optimizer.clip_grad_norm(0.5)
                optimizer.step()
                optimizer.zero_grad()
            counts[wrapper.__name__, layers] = ops.count
    assert counts["MemoryEfficientFP16Optimizer", 100] == counts["MemoryEfficientFP16Optimizer", 2]
    # fairseq's wrapper copies in, copies out and zeroes each of the 98 more weights and biases.
    assert counts["FP16Optimizer", 100] - counts["FP16Optimizer", 2] == 3 * 2 * 98


def test_memory_efficient_half_precision_leaves_a_parameter_without_gradient_alone_and_reloads_fp32_state():
    model = half_model(torch.bfloat16)
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    params = list(model.parameters()) + [unused]
    optimizer = MemoryEfficientFP16Optimizer.build_optimizer(half_precision_cfg("bf16"), params)
    train_updates(optimizer, model, updates=2)
    # As in fp32 training: no gradient, no step (fairseq's FP16Optimizer would decay it on a zero gradient). The
    # fp32 master shows it: a decay of lr * weight_decay = 1e-4 per update would be lost in the bf16 rounding.
    assert torch.equal(optimizer.wrapped_optimizer.master_params[-1], torch.ones(3)) and torch.equal(unused, torch.ones(3, dtype=torch.bfloat16))
    resumed = MemoryEfficientFP16Optimizer.build_optimizer(half_precision_cfg("bf16"), params)
    # Built from the bf16 weights, its masters are their rounding until the checkpoint's fp32 ones are loaded.
    assert not all(torch.equal(a, b) for a, b in zip(resumed.wrapped_optimizer.master_params, optimizer.wrapped_optimizer.master_params))
    resumed.load_state_dict(optimizer.state_dict())
    for a, b in zip(resumed.wrapped_optimizer.master_params, optimizer.wrapped_optimizer.master_params):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    for saved, loaded in zip(optimizer.param_groups, resumed.param_groups):
        for a, b in zip(saved["params"], loaded["params"]):
            if a.grad is not None:
                moment = resumed.optimizer.state[b]["exp_avg_sq"]
                assert moment.dtype == torch.float32 and torch.equal(moment, optimizer.optimizer.state[a]["exp_avg_sq"])


@pytest.mark.parametrize("max_update", [3, 4, 7, 10, 4000])
def test_logmel_tri_stage_is_fairseqs_tri_stage_wherever_that_works(max_update):
    from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRScheduleConfig, TriStageLRSchedule

    from fairseq_logmel_conformer.optim.logmel_tri_stage import LogmelTriStageConfig, LogmelTriStageSchedule

    settings = dict(phase_ratio=[0.3, 0.3, 0.4], init_lr_scale=0.01, final_lr_scale=0.05, max_update=max_update, lr=[1e-4])
    ours = LogmelTriStageSchedule(OmegaConf.structured(LogmelTriStageConfig(**settings)), make_optimizer([torch.nn.Parameter(torch.zeros(1))]))
    theirs = TriStageLRSchedule(OmegaConf.structured(TriStageLRScheduleConfig(**settings)), make_optimizer([torch.nn.Parameter(torch.zeros(1))]))
    assert [ours.step_update(n) for n in range(max_update + 2)] == [theirs.step_update(n) for n in range(max_update + 2)]


def test_logmel_tri_stage_names_the_setting_to_change():
    from fairseq_logmel_conformer.optim.logmel_tri_stage import LogmelTriStageConfig, LogmelTriStageSchedule

    def build(**fields):
        cfg = LogmelTriStageConfig(init_lr_scale=0.01, final_lr_scale=0.05, lr=[1e-4], **fields)
        return LogmelTriStageSchedule(OmegaConf.structured(cfg), make_optimizer([torch.nn.Parameter(torch.zeros(1))]))

    with pytest.raises(ValueError, match="set optimization.max_update"):
        build(phase_ratio=[0.3, 0.3, 0.4], max_update=0)
    with pytest.raises(ValueError, match="lr_scheduler.phase_ratio must be three fractions"):
        build(phase_ratio=[0.5, 0.3, 0.4], max_update=10)
    with pytest.raises(ValueError, match="lr_scheduler.decay_steps must be at least 1"):
        build(warmup_steps=5, max_update=10)

"""logmel_adamw: fairseq's Adam update, fused."""
import pytest
import torch
from fairseq import utils
from fairseq.optim.adam import Adam, FairseqAdam, FairseqAdamConfig
from omegaconf import OmegaConf

from fairseq_logmel_conformer.optim.logmel_adamw import LogmelAdamW, LogmelAdamWConfig, check_lr_scales, set_lr_scale


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


def test_scaled_parameters_take_their_share_of_the_scheduled_rate_even_after_a_reload():
    scaled, plain = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    set_lr_scale(scaled, 0.1)
    optimizer = make_optimizer([scaled, plain], weight_decay=0.0)
    optimizer.set_lr(0.5)
    assert optimizer.get_lr() == 0.5, "the log shows the scheduled rate, whichever group comes first"
    scaled.grad, plain.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    torch.testing.assert_close(scaled.detach(), torch.full((3,), -0.05), rtol=0, atol=1e-6)
    torch.testing.assert_close(plain.detach(), torch.full((3,), -0.5), rtol=0, atol=1e-5)
    # A resumed run keeps its own scales, as fairseq keeps its own learning rate, over the checkpoint's.
    set_lr_scale(scaled, 0.3)
    resumed = make_optimizer([scaled, plain])
    resumed.load_state_dict(optimizer.state_dict(), optimizer_overrides={"lr": 1e-2})
    resumed.set_lr(0.2)
    assert sorted(group["lr"] for group in resumed.param_groups) == pytest.approx([0.06, 0.2])


def test_an_optimizer_that_ignores_the_scales_is_refused():
    model = torch.nn.Linear(2, 2)
    set_lr_scale(model.weight, 0.1)
    check_lr_scales(model, make_optimizer(list(model.parameters())))
    with pytest.raises(ValueError, match=r"scales \[0.1, 1.0\] \(model.pretrained_lr_scale\), but the optimizer applies \[1.0\]"):
        check_lr_scales(model, FairseqAdam(OmegaConf.structured(FairseqAdamConfig(lr=[1e-2], tpu=False)), list(model.parameters())))


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

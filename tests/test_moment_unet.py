"""Moment U-Net (model/moment/unet.py): registry, contract, exact D4 / C4 equivariance.

Equivariance is measured in float32 inside :func:`model.equivariance.exact_arithmetic` (TF32 off on CUDA; on
CPU the IEEE GEMM convolution instead of oneDNN, whose fp32 convolution is ~6× noisier and leaves the depth-4
U-Net's rounding noise right at 1e-5). The model's maths is the same in both paths.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model import build_model, count_parameters, get_model_class
from model.equivariance import equivariance_error, group_elements
from model.equivariance import exact_arithmetic
from model.moment.unet import EqUnetVariant, MomentUNet


def _adam_steps(net, shape, steps=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        x = torch.randn(*shape, generator=g)
        target = torch.randint(0, net.num_classes, (shape[0], *shape[2:]), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), target).backward()
        opt.step()


def _errors(net, x, group="D4"):
    out = {}
    with exact_arithmetic():
        for mode in ("train", "eval"):
            net.train(mode == "train")
            out[mode] = equivariance_error(net, x, group)
    return out


def test_registry_alias_and_shape():
    assert get_model_class("moment_unet") is MomentUNet and EqUnetVariant is MomentUNet
    net = build_model("moment_unet", width=4, depth=2, kernel_size=3)
    assert net.group == "D4" and net.num_classes == 3
    y = net(torch.randn(2, 3, 16, 16))
    assert y.shape == (2, 3, 16, 16)
    assert build_model("moment_unet", width=4, depth=2, group="c4").group == "C4"
    assert count_parameters(build_model("moment_unet", width=8, depth=2)) > count_parameters(net)


def test_contract_errors_and_padding():
    net = MomentUNet(width=4, depth=2, kernel_size=3)
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 3, 18, 16))
    padded = MomentUNet(width=4, depth=2, kernel_size=3, pad=True)
    assert padded(torch.randn(1, 3, 18, 14)).shape == (1, 3, 18, 14)
    with pytest.raises(ValueError, match="group"):
        MomentUNet(group="C8")


def test_small_net_d4_equivariant_train_eval():
    """Fast version of the acceptance check (small width and depth)."""
    torch.manual_seed(0)
    net = MomentUNet(width=8, depth=2, kernel_size=5)
    errs = _errors(net, torch.randn(2, 3, 32, 32))
    for mode, e in errs.items():
        assert max(e.values()) <= 1e-5, (mode, e)
        assert len(e) == 8


def test_small_net_hidden_levels_mix_scalars_and_vectors():
    net = MomentUNet(width=8, depth=2, vector_fraction=0.5)
    assert all(t.n_scalar > 0 and t.n_vector > 0 for t in net.types)
    assert net.ups[-1].out_type.n_vector == 0  # logits come from scalars only


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 128, 96)])
def test_default_moment_unet_d4_all_elements(shape):
    """Acceptance: default MomentUNet(group="D4"), all 8 elements ≤ 1e-5, train and eval, before and after
    3 Adam steps on random data."""
    torch.manual_seed(0)
    net = MomentUNet(group="D4")
    x = torch.randn(*shape)
    for stage in ("init", "after 3 Adam steps"):
        if stage != "init":
            _adam_steps(net, shape)
        for mode, e in _errors(net, x).items():
            assert len(e) == 8
            assert max(e.values()) <= 1e-5, (stage, mode, e)


@pytest.mark.slow
def test_default_moment_unet_c4_rotations_not_reflections():
    torch.manual_seed(0)
    net = MomentUNet(group="C4")
    x = torch.randn(2, 3, 64, 64)
    for stage in ("init", "after 3 Adam steps"):
        if stage != "init":
            _adam_steps(net, tuple(x.shape))
        for mode, e in _errors(net, x).items():
            rot = [e[g.name] for g in group_elements("D4") if not g.reflect]
            refl = [e[g.name] for g in group_elements("D4") if g.reflect]
            assert max(rot) <= 1e-5, (stage, mode, e)
            assert min(refl) > 1e-3, (stage, mode, e)


def test_eval_folds_norm_into_conv_and_refreshes():
    """Eval without gradients folds each ScalarVectorBatchNorm into its conv: same outputs as the layer-by-layer path,
    and rebuilt after an optimizer step."""
    torch.manual_seed(0)
    net = MomentUNet(width=8, depth=2)
    x = torch.randn(2, 3, 32, 32)
    _adam_steps(net, (2, 3, 32, 32), steps=2)
    net.eval()
    with torch.no_grad():
        folded = net(x)
    ref = net(x)  # gradients enabled -> unfused layer-by-layer path
    assert torch.allclose(folded, ref.detach(), rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    _adam_steps(net, (2, 3, 32, 32), steps=1, seed=5)
    net.eval()
    with torch.no_grad():
        folded2 = net(x)
    ref2 = net(x).detach()
    assert torch.allclose(folded2, ref2, rtol=1e-5, atol=1e-5 * float(ref2.abs().max()))
    assert (folded2 - folded).abs().max() > 1e-4


@pytest.mark.parametrize("group", ["D4", "C4"])
def test_export_is_plain_torch_with_equal_outputs(group):
    """export(): only nn.Conv2d (no moment layers or norms left), outputs equal to the eval model (≤ 1e-5
    relative) after training steps moved the weights and running statistics, and still exactly equivariant."""
    from model.moment import MomentConv2d, ScalarVectorBatchNorm

    torch.manual_seed(0)
    net = MomentUNet(width=8, depth=2, group=group)
    _adam_steps(net, (2, 3, 32, 32), steps=2)
    net.eval()
    plain = net.export()
    kinds = {type(m) for m in plain.modules()}
    assert torch.nn.Conv2d in kinds and MomentConv2d not in kinds and ScalarVectorBatchNorm not in kinds
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, out = net(x), plain(x)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert not plain.training and net.training is False
    with exact_arithmetic():
        errors = equivariance_error(plain, torch.randn(1, 3, 32, 32), group=group)
    assert max(errors.values()) <= 1e-5, errors

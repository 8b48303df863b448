"""Moment-kernel layers other than the convolution (model/moment/): batch norm, nonlinearities, pooling,
up-sampling, concatenation (equivariance, statistics, hand-written backwards), input checks, exact_arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.equivariance import exact_arithmetic
from model.moment import (FieldAvgPool2d, FieldNonlinearity, FieldTensor, FieldType, FieldUpsample, MomentConv2d,
                          ScalarVectorBatchNorm, act_field, cat_fields)
from tests.test_model_helpers import D4, rel_err


# ------------------------------------------------------------------------------------------------ other layers
def _check_layer(layer, t_in: FieldType, t_out: FieldType, shape=(2, 10, 10)):
    torch.manual_seed(0)
    x = torch.randn(shape[0], t_in.channels, *shape[1:])
    y = layer(x).detach()
    for g in D4:
        assert rel_err(layer(act_field(x, g, t_in)).detach(), act_field(y, g, t_out)) <= 1e-6, g.name


def test_batchnorm_equivariant_train_and_eval():
    t = FieldType(3, 4)
    bn = ScalarVectorBatchNorm(t)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    bn.train()
    _check_layer(bn, t, t)
    assert (bn.running_sq != 1).all() and bn.num_batches_tracked > 0
    bn.eval()
    _check_layer(bn, t, t)


def test_batchnorm_statistics():
    torch.manual_seed(0)
    t = FieldType(2, 2)
    bn = ScalarVectorBatchNorm(t).train()
    x = torch.randn(4, 6, 8, 8) * 3 + 1
    y = bn(x).detach()
    assert torch.allclose(y[:, :2].mean((0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(y[:, :2].var((0, 2, 3), unbiased=False), torch.ones(2), atol=1e-3)
    sq = y[:, 2:].unflatten(1, (2, 2)).square().sum(2).mean((0, 2, 3))
    assert torch.allclose(sq, torch.ones(2), atol=1e-3)
    # no mean shift on vectors: the output is a positive multiple of the input, per field
    ratio = y[:, 2:] / x[:, 2:]
    assert torch.allclose(ratio[:, 0], ratio[:, 1]) and (ratio > 0).all()


@pytest.mark.parametrize("vector", ["norm_relu", "gated"])
def test_nonlinearity_equivariant_and_direction_preserving(vector):
    t = FieldType(4, 3)
    nl = FieldNonlinearity(t, vector=vector)
    _check_layer(nl, t, t)
    x = torch.randn(2, t.channels, 6, 6)
    y = nl(x)
    assert torch.equal(y[:, :4], F.relu(x[:, :4]))
    v, w = x[:, 4:].unflatten(1, (3, 2)), y[:, 4:].unflatten(1, (3, 2))
    cross = v[:, :, 0] * w[:, :, 1] - v[:, :, 1] * w[:, :, 0]
    assert cross.abs().max() < 1e-6 and ((v * w).sum(2) >= 0).all()  # same direction, scaled


def test_pool_upsample_cat_equivariant():
    t = FieldType(2, 3)
    _check_layer(FieldAvgPool2d(t), t, t)
    for mode in ("nearest", "bilinear"):
        _check_layer(FieldUpsample(t, mode), t, t)
    with pytest.raises(ValueError, match="even"):
        FieldAvgPool2d(t)(torch.randn(1, t.channels, 5, 6))

    a_t, b_t = FieldType(2, 1), FieldType(1, 2)
    a, b = torch.randn(1, 4, 6, 6), torch.randn(1, 5, 6, 6)
    y, t_out = cat_fields([a, b], [a_t, b_t])
    assert t_out == FieldType(3, 3)
    assert torch.equal(y[:, :3], torch.cat([a[:, :2], b[:, :1]], 1))
    assert torch.equal(y[:, 3:], torch.cat([a[:, 2:], b[:, 1:]], 1))
    for g in D4:
        yg, _ = cat_fields([act_field(a, g, a_t), act_field(b, g, b_t)], [a_t, b_t])
        assert torch.equal(yg, act_field(y, g, t_out))
    ft = cat_fields([FieldTensor(a, a_t), FieldTensor(b, b_t)])
    assert isinstance(ft, FieldTensor) and ft.type == t_out


# ------------------------------------------------------------------------------------------------ input checks
def test_bad_input_names_both_layouts():
    t = FieldType(2, 1)
    conv = MomentConv2d(t, FieldType(1, 1), 3)
    with pytest.raises(ValueError) as e:
        conv(torch.randn(1, 5, 8, 8))
    msg = str(e.value)
    assert "FieldType(n_scalar=2, n_vector=1) = 4 channels" in msg and "[s0, s1 | v0x, v0y]" in msg
    assert "5 channels" in msg and "[c0 .. c4]" in msg
    # same channel count, different field type: caught when the type travels with the tensor
    with pytest.raises(ValueError) as e:
        conv(FieldTensor(torch.randn(1, 4, 8, 8), FieldType(4, 0)))
    assert "FieldType(n_scalar=4, n_vector=0)" in str(e.value) and "FieldType(n_scalar=2, n_vector=1)" in str(e.value)
    out = conv(FieldTensor(torch.randn(1, 4, 8, 8), t))
    assert isinstance(out, FieldTensor) and out.type == FieldType(1, 1)
    for layer in (ScalarVectorBatchNorm(t), FieldNonlinearity(t), FieldAvgPool2d(t), FieldUpsample(t)):
        with pytest.raises(ValueError, match="4 channels"):
            layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="4-D"):
        conv(torch.randn(4, 8, 8))
    with pytest.raises(ValueError, match="odd"):
        MomentConv2d(t, t, 4)
    with pytest.raises(ValueError, match="group"):
        MomentConv2d(t, t, 3, group="D8")


def test_exact_arithmetic_restores_settings():
    before = (torch.backends.mkldnn.enabled, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    with exact_arithmetic():
        assert not torch.backends.mkldnn.enabled
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.mkldnn.enabled, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32) == before


def test_gradcheck_fused_norm_and_nonlinearity():
    """ScalarVectorBatchNorm (train) and norm-ReLU have hand-written backwards: check them in float64."""
    torch.manual_seed(0)
    t = FieldType(3, 2)
    bn = ScalarVectorBatchNorm(t).double().train()
    nl = FieldNonlinearity(t).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        nl.threshold.uniform_(0.0, 0.5)
    x = torch.randn(2, t.channels, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: bn(inp), (x,))
    assert torch.autograd.gradcheck(lambda inp: nl(inp), (x,))
    # parameter gradients too
    w = bn.weight.detach().clone().requires_grad_(True)
    b = bn.bias.detach().clone().requires_grad_(True)
    th = nl.threshold.detach().clone().requires_grad_(True)
    from model.moment.activations import _NormReLUFn
    from model.moment.norm import _ScalarVectorBatchNormFn

    assert torch.autograd.gradcheck(
        lambda inp, w, b, th: _NormReLUFn.apply(_ScalarVectorBatchNormFn.apply(inp, w, b, 3, 2, 1e-5)[0], th, 3, 2, 1e-8),
        (x, w, b, th))

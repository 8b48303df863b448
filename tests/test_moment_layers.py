"""Moment-kernel layers (model/moment/): field types, the group action on fields, the convolution (equivariance,
the scalar→vector kernel, gradients, the eval-mode kernel cache, export, parameter counts). The other layers are
in tests/test_model_moment_field_layers.py."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from model.equivariance import GroupElement, act
from model.moment import FieldType, MomentConv2d, act_field, radial_grid, vector_matrix
from tests.test_model_helpers import D4, position_field, rel_err


def compose(g2: GroupElement, g1: GroupElement) -> GroupElement:
    """``g2 ∘ g1`` (apply ``g1`` first). Uses ``f ∘ r_θ = r_{−θ} ∘ f``."""
    a1 = -g1.angle if g2.reflect else g1.angle
    return GroupElement((g2.angle + a1) % 360.0, bool(g2.reflect) != bool(g1.reflect))


def inverse(g: GroupElement) -> GroupElement:
    """``g⁻¹``: for ``r_θ f`` it is itself (an involution); for ``r_θ`` it is ``r_{−θ}``."""
    if g.reflect:
        return GroupElement(g.angle % 360.0, True)
    return GroupElement((-g.angle) % 360.0, False)


# ------------------------------------------------------------------------------------------------ field types
def test_field_type_layout_and_split():
    t = FieldType(3, 2)
    assert t.channels == 7 and t.n_fields == 5
    assert t.layout() == "[s0, s1, s2 | v0x, v0y, v1x, v1y]"
    assert FieldType.from_channels(32, 0.5) == FieldType(16, 8)
    assert FieldType.from_channels(32, 0.0) == FieldType(32, 0)
    assert FieldType.from_channels(3, 0.5).channels == 3
    assert FieldType(2, 1) + FieldType(1, 3) == FieldType(3, 4)
    with pytest.raises(ValueError):
        FieldType(-1, 2)


# ------------------------------------------------------------------------------------------------ group action
def test_vector_matrix_is_a_homomorphism_and_matches_composition():
    def mm(a, b):
        return torch.tensor(a) @ torch.tensor(b)

    for g1, g2 in itertools.product(D4, D4):
        assert torch.equal(mm(vector_matrix(g2), vector_matrix(g1)), torch.tensor(vector_matrix(compose(g2, g1))))
    for g in D4:
        assert compose(g, inverse(g)).name == "e" and compose(inverse(g), g).name == "e"
    # rot90 turns "right" (1, 0) into "up" = (0, -1) in display coordinates (y down); flip negates x.
    assert vector_matrix(GroupElement(90.0)) == ((0, 1), (-1, 0))
    assert vector_matrix(GroupElement(0.0, True)) == ((-1, 0), (0, 1))


def test_field_action_group_law():
    torch.manual_seed(0)
    t = FieldType(2, 3)
    x = torch.randn(2, t.channels, 6, 8)
    assert torch.equal(act_field(x, GroupElement(0.0), t), x)
    for g1, g2 in itertools.product(D4, D4):
        assert torch.equal(act_field(act_field(x, g1, t), g2, t), act_field(x, compose(g2, g1), t)), (g1.name, g2.name)
    for g in D4:
        assert torch.equal(act_field(act_field(x, g, t), inverse(g), t), x)
    # scalar channels move exactly like model.equivariance.act moves pixels
    for g in D4:
        assert torch.equal(act_field(x, g, t)[:, :2], act(x[:, :2], g))


def test_vector_components_follow_the_pixels():
    """ρ(g) must be the matrix that moves positions: then the position field p − c is invariant."""
    for h, w in ((6, 6), (5, 7)):
        p = position_field(h, w)
        for g in D4:
            out = act_field(p, g, FieldType(0, 1))
            assert torch.equal(out, position_field(*out.shape[-2:])), g.name


# ------------------------------------------------------------------------------------------------ convolution
@pytest.mark.parametrize("k", [3, 5, 7])
def test_moment_conv_d4_equivariant_every_element(k):
    torch.manual_seed(k)
    ti, to = FieldType(3, 2), FieldType(2, 3)
    conv = MomentConv2d(ti, to, k, group="D4", bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, ti.channels, 14, 14)
    y = conv(x).detach()
    assert y[:, 2:].abs().max() > 0.1  # vector outputs are not trivially zero
    for g in D4:
        out = conv(act_field(x, g, ti)).detach()
        assert rel_err(out, act_field(y, g, to)) <= 1e-5, (k, g.name)
    # negative control: moving the pixels without rotating the components is wrong for rot90 and flip
    for g in (GroupElement(90.0), GroupElement(0.0, True)):
        out = conv(act_field(x, g, ti)).detach()
        assert rel_err(out, act(y, g)) > 1e-2


@pytest.mark.parametrize("k", [3, 5, 7])
def test_moment_conv_vector_output_rotates_with_input(k):
    """Scalar input → vector output: rotating the input rotates the field spatially *and* its components."""
    torch.manual_seed(10 + k)
    conv = MomentConv2d(FieldType(1, 0), FieldType(0, 1), k)
    x = torch.randn(1, 1, 13, 13)
    v = conv(x).detach()
    for g in D4:
        vg = conv(act(x, g)).detach()
        m = vector_matrix(g)
        moved = act(v, g)
        expected = torch.stack([m[0][0] * moved[:, 0] + m[0][1] * moved[:, 1],
                                m[1][0] * moved[:, 0] + m[1][1] * moved[:, 1]], 1)
        assert rel_err(vg, expected) <= 1e-5, (k, g.name)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_moment_conv_c4_rotations_only(k):
    torch.manual_seed(20 + k)
    ti, to = FieldType(2, 2), FieldType(2, 2)
    conv = MomentConv2d(ti, to, k, group="C4")
    x = torch.randn(2, ti.channels, 12, 12)
    y = conv(x).detach()
    for g in D4:
        err = rel_err(conv(act_field(x, g, ti)).detach(), act_field(y, g, to))
        if g.reflect:
            assert err > 1e-3, (k, g.name)
        else:
            assert err <= 1e-5, (k, g.name)


def test_delta_input_shows_scalar_to_vector_kernel():
    """The impulse response of a scalar→vector layer is f(|x|) x̂: radial, pointing away, zero at the centre."""
    k, n = 7, 15
    conv = MomentConv2d(FieldType(1, 0), FieldType(0, 1), k)
    ridx, _, _, radii = radial_grid(k)
    f = torch.arange(1, len(radii), dtype=torch.float32)  # f(r_a) = a > 0 for the radii a >= 1
    with torch.no_grad():
        conv.weight.copy_(f)
    delta = torch.zeros(1, 1, n, n)
    delta[0, 0, n // 2, n // 2] = 1.0
    v = conv(delta).detach()[0].double()  # (2, n, n)
    pos = position_field(n, n)[0]  # p − centre
    r = pos.norm(dim=0)
    c = n // 2
    assert v[:, c, c].abs().max() == 0  # zero at the centre
    inside = (pos.abs().amax(0) <= k // 2) & (r > 0)
    outside = pos.abs().amax(0) > k // 2
    assert v[:, outside].abs().max() == 0  # support is the k×k window
    # parallel to the displacement and pointing away from the centre
    cross = v[0] * pos[1] - v[1] * pos[0]
    dot = (v * pos).sum(0)
    assert cross[inside].abs().max() < 1e-5 and (dot[inside] > 0).all()
    # magnitude is f(|x|): exactly the learned value of that pixel's radius
    all_radii = torch.tensor(radii)
    for i, j in zip(*torch.nonzero(inside, as_tuple=True)):
        a = int(torch.argmin((all_radii - r[i, j]).abs()))
        assert math.isclose(float(v[:, i, j].norm()), float(f[a - 1]), rel_tol=1e-6)
        assert torch.allclose(v[:, i, j], f[a - 1].double() * pos[:, i, j] / r[i, j], atol=1e-6)


def test_gradcheck_double():
    """gradcheck w.r.t. input, radial weights and bias (kernel assembly + conv), D4 and C4, float64."""
    torch.manual_seed(0)
    for group in ("D4", "C4"):
        conv = MomentConv2d(FieldType(1, 1), FieldType(1, 1), 3, group=group, bias=True).double()
        x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
        w = conv.weight.detach().clone().requires_grad_(True)
        b = torch.randn(1, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda inp, w, b: _functional_conv(conv, inp, w, b), (x, w, b))


def _functional_conv(conv: MomentConv2d, x, w, b):
    kernel = conv._assemble(w)
    bias = torch.cat([b, b.new_zeros(2 * conv.out_type.n_vector)])
    return F.conv2d(x, kernel, bias, padding=conv.padding)


def test_gradcheck_module_parameters():
    """gradcheck through the module itself (weights as leaves of the autograd graph)."""
    torch.manual_seed(1)
    conv = MomentConv2d(FieldType(1, 1), FieldType(1, 1), 3, bias=True).double()
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))
    # gradients reach the parameters and match a finite difference on one weight
    conv.zero_grad()
    conv(x).square().sum().backward()
    g = conv.weight.grad[0].item()
    eps = 1e-6
    with torch.no_grad():
        conv.weight[0] += eps
        up = conv(x).square().sum().item()
        conv.weight[0] -= 2 * eps
        down = conv(x).square().sum().item()
        conv.weight[0] += eps
    assert math.isclose(g, (up - down) / (2 * eps), rel_tol=1e-5, abs_tol=1e-8)


def test_eval_cache_matches_train_assembly_and_refreshes():
    torch.manual_seed(0)
    conv = MomentConv2d(FieldType(4, 2), FieldType(3, 3), 5, bias=True)
    x = torch.randn(2, 8, 16, 16)
    conv.train()
    y_train = conv(x).detach()
    conv.eval()
    with torch.no_grad():
        y_eval = conv(x)
        k1 = conv.cached_kernel()
        y_eval2 = conv(x)
        assert conv.cached_kernel() is k1  # reused while the weights are unchanged
    assert rel_err(y_eval, y_train) <= 1e-6 and torch.equal(y_eval, y_eval2)
    assert torch.equal(k1, conv.kernel().detach())
    # one optimizer step -> the cache is rebuilt
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)
    conv.train()
    conv(x).square().mean().backward()
    opt.step()
    conv.eval()
    with torch.no_grad():
        y_after = conv(x)
        k2 = conv.cached_kernel()
    assert k2 is not k1 and not torch.equal(k2, k1)
    assert torch.equal(k2, conv.kernel().detach())
    assert rel_err(y_after, F.conv2d(x, conv.kernel().detach(), conv._full_bias().detach(), padding=2)) <= 1e-6
    assert (y_after - y_eval).abs().max() > 1e-4
    # also invalidated by load_state_dict
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    state["weight"].mul_(2.0)
    conv.load_state_dict(state)
    with torch.no_grad():
        assert torch.allclose(conv.cached_kernel(), 2 * k2)
    # eval mode with gradients needed uses the differentiable assembly
    conv.zero_grad()
    conv(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_export_is_a_plain_conv_with_identical_outputs():
    torch.manual_seed(0)
    conv = MomentConv2d(FieldType(2, 2), FieldType(3, 1), 5, group="C4", bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    plain = conv.export()
    assert type(plain) is torch.nn.Conv2d
    x = torch.randn(1, 6, 10, 10)
    assert torch.allclose(plain(x), conv(x), atol=1e-6)


def test_parameter_counts():
    # D4, k=5: 6 radii -> ss 6, sv 5, vs 5, vv 6 + 5 per field pair
    conv = MomentConv2d(FieldType(2, 1), FieldType(1, 2), 5)
    assert conv.n_weights == 1 * 2 * 6 + 2 * 2 * 5 + 1 * 1 * 5 + 2 * 1 * 11
    c4 = MomentConv2d(FieldType(2, 1), FieldType(1, 2), 5, group="C4")
    assert c4.n_weights == 1 * 2 * 6 + 2 * 2 * 10 + 1 * 1 * 10 + 2 * 1 * 22
    assert MomentConv2d(FieldType(1, 1), FieldType(1, 1), 5, bias=True).bias.numel() == 1


def test_kernel_assembly_is_one_einsum_and_one_conv(monkeypatch):
    calls = {"einsum": 0, "conv2d": 0}
    real_einsum, real_conv = torch.einsum, F.conv2d

    def einsum(*a, **k):
        calls["einsum"] += 1
        return real_einsum(*a, **k)

    def conv2d(*a, **k):
        calls["conv2d"] += 1
        return real_conv(*a, **k)

    conv = MomentConv2d(FieldType(3, 2), FieldType(2, 3), 5, group="C4", bias=True)
    x = torch.randn(1, 7, 8, 8)
    monkeypatch.setattr(torch, "einsum", einsum)
    monkeypatch.setattr(F, "conv2d", conv2d)
    conv(x)
    assert calls == {"einsum": 1, "conv2d": 1}

"""Group actions on images and the equivariance error: exact group laws, interpolation, non-vacuity."""
import pytest
import torch
from torch import nn

from model.equivariance import (
    GroupElement, act, act_inverse, calibrate_batchnorm, central_disk, disk_on_canvas, equivariance_error, flip,
    group_elements, rot90, rotate, smooth_noise,
)
from model.unet import UNet


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(2, 3, 16, 12)


def test_group_laws_exact(x):
    assert torch.equal(rot90(rot90(rot90(rot90(x)))), x)  # r^4 = e
    assert torch.equal(flip(flip(x)), x)  # f^2 = e
    assert torch.equal(flip(rot90(flip(x))), rot90(x, -1))  # f r f = r^-1
    assert torch.equal(rot90(x, -1), rot90(rot90(rot90(x))))


@pytest.mark.parametrize("group", ["C4", "D4"])
def test_inverse_and_closure(group, x):
    elements = group_elements(group)
    assert len(elements) == {"C4": 4, "D4": 8}[group]
    sq = torch.randn(1, 2, 8, 8)
    images = {tuple(act(sq, g).flatten().tolist()) for g in elements}
    assert len(images) == len(elements)  # all elements act differently
    for g in elements:
        assert torch.equal(act_inverse(act(x, g), g), x)
        for h in elements:  # closure: g·(h·x) is again some element's action
            assert tuple(act(act(sq, h), g).flatten().tolist()) in images


@pytest.mark.parametrize("size", [64, 65])
def test_interpolated_rotation_agrees_with_rot90_inside_disk(size):
    torch.manual_seed(1)
    img = torch.randn(2, 3, size, size)
    disk = central_disk(size, size)
    for k in (1, 2, 3):
        diff = (rotate(img, 90.0 * k) - rot90(img, k))[..., disk].abs().max()
        assert diff <= 1e-5, (k, float(diff))


def test_rotation_direction_is_counterclockwise_as_displayed():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 2, 4] = 1.0  # a pixel to the right of the centre
    # counter-clockwise on screen (y down): the right moves to the top
    assert rot90(img)[0, 0, 0, 2] == 1.0
    assert rotate(img, 90.0)[0, 0, 0, 2] > 0.99


def test_error_is_not_vacuous_for_plain_unet():
    torch.manual_seed(0)
    net = UNet(width=8, depth=2).eval()
    errors = equivariance_error(net, torch.randn(2, 3, 64, 64), "D4")
    assert set(errors) == {g.name for g in group_elements("D4")}
    assert errors["e"] < 1e-6
    assert max(errors.values()) > 1e-2


class Pointwise(nn.Module):
    """1×1 convolutions and pointwise nonlinearities: equivariant to every pixel permutation."""

    def __init__(self, linear: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, 8, 1), nn.Conv2d(8, 3, 1)] if linear else [nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def test_error_is_tiny_for_pointwise_model():
    torch.manual_seed(0)
    errors = equivariance_error(Pointwise(), torch.randn(2, 3, 64, 64), "D4")
    assert max(errors.values()) < 1e-6


def test_interpolated_elements_for_linear_pointwise_model():
    # a linear pointwise map commutes with bilinear interpolation, so C8/D8 errors are at rounding level
    torch.manual_seed(0)
    errors = equivariance_error(Pointwise(linear=True), torch.randn(1, 3, 64, 64), "D8")
    assert len(errors) == 16 and "rot45" in errors and "rot45*flip" in errors
    assert max(errors.values()) < 1e-5


def test_exact_only_and_element_lists():
    errs = equivariance_error(Pointwise(), torch.randn(1, 3, 32, 32), "C8", exact_only=True)
    assert set(errs) == {"e", "rot90", "rot180", "rot270"}
    errs = equivariance_error(Pointwise(), torch.randn(1, 3, 32, 32), [GroupElement(45.0)])
    assert set(errs) == {"rot45"}


def test_unknown_group():
    with pytest.raises(ValueError, match="unknown group"):
        group_elements("Q7")


def test_l2_norm_option_measures_the_ratio_of_norms():
    """A model that is the identity except for one pixel: max and L2 errors are the known ratios."""
    x = torch.ones(1, 1, 8, 8)

    def shifted(t):  # equivariant except that pixel (0, 0) is always raised by 1
        t = t.clone()
        t[..., 0, 0] += 1.0
        return t

    g = [GroupElement(90.0)]
    assert equivariance_error(shifted, x, g)["rot90"] == pytest.approx(1.0 / 2.0)
    y = shifted(x)
    expected = float(((shifted(rot90(x)) - rot90(y)).norm() / y.norm()))
    assert equivariance_error(shifted, x, g, norm="l2")["rot90"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        equivariance_error(shifted, x, g, norm="l1")


def test_disk_on_canvas_content_survives_rotation():
    """The tapered disk on a larger canvas: nothing leaves the frame under 45° (total mass kept), the corners of
    the canvas are zero, and the input inside the inner disk is unchanged."""
    x = smooth_noise(64, seed=3)
    assert x.shape == (1, 3, 64, 64) and abs(float(x.std()) - 1.0) < 1e-5
    c = disk_on_canvas(x, 96)
    assert c.shape == (1, 3, 96, 96)
    assert float(c[..., :16, :].abs().max()) == 0.0 and float(c[..., :, :16].abs().max()) == 0.0
    inner = central_disk(64, 64, margin=9.0)
    assert torch.equal(c[..., 16:80, 16:80][..., inner], x[..., inner])
    r = rotate(c.abs(), 45.0)
    assert abs(float(r.sum() / c.abs().sum()) - 1.0) < 0.01
    with pytest.raises(ValueError, match="canvas"):
        disk_on_canvas(x, 65)


def test_calibrate_batchnorm_uses_the_input_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    x = torch.randn(2, 3, 8, 8) * 5 + 3
    calibrate_batchnorm(net, x)
    assert not net.training and net[1].momentum == 0.1
    with torch.no_grad():
        y = net(x)
    assert float(y.mean(dim=(0, 2, 3)).abs().max()) < 1e-4
    assert float((y.var(dim=(0, 2, 3), unbiased=False) - 1).abs().max()) < 1e-2

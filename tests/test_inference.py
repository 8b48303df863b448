"""Sliding-window prediction (exact stitching) and D4 test-time augmentation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from model import build_model
from model.equivariance import act, group_elements
from util.inference import d4_tta, forward_padded, predict_logits, receptive_radius


class PointwiseNet(nn.Module):
    """Only 1×1 convolutions and pointwise ops: exactly D4-equivariant (used before the moment U-Net exists)."""

    depth = 0
    in_channels = 3

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.Tanh(), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def small_unet():
    torch.manual_seed(0)
    m = build_model("unet", width=4, depth=2)
    # non-trivial BatchNorm statistics, then eval mode (pointwise normalisation)
    with torch.no_grad():
        m.train()
        m(torch.rand(2, 3, 64, 64))
    return m.eval()


def test_receptive_radius_is_a_true_bound(small_unet):
    r = receptive_radius(small_unet, cache=False)
    assert r % 4 == 0 and 8 <= r <= 64
    # a change farther than r from a pixel block never changes it; a change just inside does
    x = torch.rand(1, 3, 192, 192)
    with torch.no_grad():
        base = small_unet(x)[..., 96:100, 96:100]
        far = x.clone()
        far[..., : 96 - r, :] = torch.rand_like(far[..., : 96 - r, :])
        assert torch.equal(small_unet(far)[..., 96:100, 96:100], base)
        near = x.clone()
        near[..., 96 - r // 2, 96] += 5.0
        assert not torch.equal(small_unet(near)[..., 96:100, 96:100], base)


@pytest.mark.slow
def test_sliding_window_equals_whole_image_on_1024(small_unet):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 1024, 1024)
    whole = predict_logits(small_unet, x, tile_size=None)
    tiled = predict_logits(small_unet, x, tile_size=320, blend="valid")
    # exact stitching: equal everywhere up to float summation order (no border band excluded)
    assert (tiled - whole).abs().max() <= 1e-5
    # the MONAI Gaussian blend is close but not exact near tile borders (documented; not the default)
    gauss = predict_logits(small_unet, x, tile_size=320, overlap=0.25, blend="gaussian")
    assert gauss.shape == whole.shape
    assert (gauss - whole).abs().max() > 1e-5
    assert (gauss - whole).abs().mean() < 0.05


def test_sliding_window_any_size_matches_padded_whole_image(small_unet):
    x = torch.rand(1, 3, 300, 270)
    whole = predict_logits(small_unet, x, tile_size=None)
    assert whole.shape == (1, 3, 300, 270)
    assert torch.equal(whole, forward_padded(small_unet, x))
    tiled = predict_logits(small_unet, x, tile_size=160, blend="valid")
    assert (tiled - whole).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="tile_size"):
        predict_logits(small_unet, x, tile_size=64, blend="valid", margin=40)
    with pytest.raises(ValueError, match="blend"):
        predict_logits(small_unet, x, blend="median")


def test_tta_leaves_an_equivariant_model_unchanged():
    torch.manual_seed(0)
    m = PointwiseNet().eval()
    x = torch.rand(2, 3, 64, 48)  # non-square: rotations change the shape and must be undone exactly
    with torch.no_grad():
        plain = predict_logits(m, x, tile_size=None)
        tta = predict_logits(m, x, tile_size=None, tta=True)
    assert (tta - plain).abs().max() <= 1e-5


def test_tta_of_any_model_is_d4_equivariant(small_unet):
    # averaging g⁻¹ f(g x) over the group gives an exactly equivariant map iff the inverse maps are right
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        y = d4_tta(small_unet, x)
        for g in group_elements("D4"):
            assert (d4_tta(small_unet, act(x, g)) - act(y, g)).abs().max() <= 1e-5, g.name
        # and TTA does change a model that is not equivariant (the check above is not vacuous)
        assert (y - small_unet(x)).abs().max() > 1e-3


def test_tta_on_moment_unet_if_available():
    try:
        m = build_model("moment_unet", width=4, depth=2, group="D4")
    except (ImportError, ModuleNotFoundError, AttributeError) as e:
        pytest.skip(f"moment_unet not available yet ({e})")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        m.train()
        for _ in range(3):  # realistic normalisation statistics (an untrained eval-mode net has huge logits)
            m(torch.rand(2, 3, 64, 64))
        m.eval()
        plain = predict_logits(m, x, tile_size=None)
        tta = predict_logits(m, x, tile_size=None, tta=True)
    # ≤ 1e-5 relative to the logits' scale (float32 rounding of the 8 summed predictions)
    assert (tta - plain).abs().max() <= 1e-5 * max(1.0, plain.abs().max().item())

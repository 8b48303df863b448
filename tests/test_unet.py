"""Plain U-Net: shapes, the input contract, padding, blocks, registry and parameter matching."""
import pytest
import torch

from model import build_model, count_parameters, list_models, width_for_params
from model.unet import UNet, UnetVariant


def test_logits_shape_and_num_classes():
    x = torch.randn(2, 3, 64, 64)
    assert UNet(width=8)(x).shape == (2, 3, 64, 64)
    assert UNet(width=8, num_classes=5)(x).shape == (2, 5, 64, 64)


@pytest.mark.parametrize("upsample", ["deconv", "nearest", "bilinear"])
@pytest.mark.parametrize("norm", ["batch", "instance", "group", "none"])
def test_options_build_and_run(upsample, norm):
    net = UNet(width=8, depth=2, upsample=upsample, norm=norm, kernel_size=5, pool="avg")
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_wrong_channels_message_names_received_and_expected():
    with pytest.raises(ValueError) as err:
        UNet(width=8, in_channels=3)(torch.randn(1, 4, 64, 64))
    msg = str(err.value)
    assert "expected 3 input channels" in msg and "got 4" in msg


def test_wrong_size_message_names_received_and_expected():
    with pytest.raises(ValueError) as err:
        UNet(width=8, depth=4)(torch.randn(1, 3, 100, 76))
    msg = str(err.value)
    assert "100x76" in msg and "16" in msg


@pytest.mark.parametrize("shape", [(3, 64, 64), (1, 1, 3, 64, 64)])
def test_wrong_ndim_message(shape):
    with pytest.raises(ValueError, match="4-D input"):
        UNet(width=8)(torch.randn(*shape))


def test_integer_input_is_refused():
    with pytest.raises(TypeError, match="floating-point"):
        UNet(width=8)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_pad_returns_input_size():
    net = UNet(width=8, depth=4, pad=True).eval()
    x = torch.randn(1, 3, 100, 76)
    assert net(x).shape == (1, 3, 100, 76)
    # a size that needs no padding gives the same logits with and without pad
    x64 = torch.randn(1, 3, 64, 64)
    net_nopad = UNet(width=8, depth=4).eval()
    net_nopad.load_state_dict(net.state_dict())
    torch.testing.assert_close(net(x64), net_nopad(x64))


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="upsample"):
        UNet(upsample="cubic")
    with pytest.raises(ValueError, match="norm"):
        UNet(norm="layer")
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        UNet(kernel_size=4)


def test_seed_alias():
    assert UnetVariant is UNet


def test_registry():
    assert "unet" in list_models()
    net = build_model("unet", in_channels=3, num_classes=4, width=8, depth=3)
    assert isinstance(net, UNet) and net.num_classes == 4 and net.depth == 3
    with pytest.raises(ValueError) as err:
        build_model("unett")
    assert "unett" in str(err.value) and "unet" in str(err.value).split("known models:")[1]


def test_default_size_matches_classic_unet():
    # width 32, depth 4, 2x2 transposed-conv up-sampling: the classic U-Net at half width, about 7.8 M
    assert abs(count_parameters(UNet()) - 7.76e6) < 0.05e6


@pytest.mark.parametrize("target", [500_000, 2_000_000, 8_000_000])
def test_width_for_params_within_5_percent(target):
    width = width_for_params("unet", target)
    n = count_parameters(build_model("unet", width=width))
    assert abs(n - target) / target <= 0.05, (width, n)


def test_width_for_params_rejects_nonsense():
    with pytest.raises(ValueError):
        width_for_params("unet", 0)

"""Steerable U-Net on escnn / e2cnn (model/escnnUnet.py): exact and approximate equivariance, errors, registry, init,
the Fourier-field layers. Export and state dicts: tests/test_model_escnn_export.py; escnn's fix and cache:
tests/test_model_escnn_compat.py.

escnn builds are slow on a shared CPU, so most tests use small widths/depths; the heavier ones are marked slow.
"""
from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("escnn")
pytest.importorskip("e2cnn")

from model import build_model, count_parameters, width_for_params  # noqa: E402
from model.equivariance import (  # noqa: E402
    disk_on_canvas, equivariance_error, mean_rotation_errors, smooth_noise,
)
from model.escnnUnet import BACKENDS, EscnnUNet, escnnUnetVariant  # noqa: E402
from model.groups import group_order  # noqa: E402
from model.unet import UNet  # noqa: E402
from tests.test_model_helpers import rel as _rel, run_python as _run_python, train_steps as _train_steps  # noqa: E402


# ------------------------------------------------------------------------------------------ exact equivariance
def _assert_exact_through_training(model: torch.nn.Module, x: torch.Tensor, grid_group: str, label: str) -> None:
    """Every element of ``grid_group`` (C4/D4, exact on the grid) ≤ 1e-5, train and eval mode, before and after
    3 optimizer steps."""
    for stage in ("init", "after 3 steps"):
        if stage == "after 3 steps":
            _train_steps(model, x)
        for mode in ("train", "eval"):
            model.train(mode == "train")
            errors = equivariance_error(model, x, grid_group)
            assert len(errors) == group_order(grid_group)
            bad = {k: v for k, v in errors.items() if not v <= 1e-5}
            assert not bad, f"{label} {stage} {mode}: equivariance errors above 1e-5: {bad}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("group", ["D4", "C4"])
def test_exact_equivariance_train_eval_and_after_steps(backend: str, group: str) -> None:
    torch.manual_seed(0)
    model = EscnnUNet(width=2 * group_order(group), depth=2, group=group, backend=backend)
    assert model.group == group
    _assert_exact_through_training(model, torch.randn(2, 3, 64, 64), group, f"{backend} {group}")


def test_exact_subgroup_of_c8_and_d8() -> None:
    """The 90° rotations (and flips for D8) of C8/D8 act exactly on the grid: error at float precision."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    for group in ("C8", "D8"):
        model = EscnnUNet(width=group_order(group), depth=1, group=group).eval()
        errors = equivariance_error(model, x, group, exact_only=True)
        assert len(errors) == (4 if group == "C8" else 8)
        assert max(errors.values()) <= 1e-5, errors


@pytest.mark.parametrize("group, grid_group", [("SO2", "C4"), ("O2", "D4")])
def test_continuous_groups_exact_on_the_grid(group: str, grid_group: str) -> None:
    """SO2/O2 (Fourier fields): their 90° rotations (and flips) act exactly on the grid, so the error is at float
    precision there, in train and eval mode and after 3 steps; export matches."""
    torch.manual_seed(0)
    model = EscnnUNet(width=32, depth=2, group=group)
    assert model.fields_kind == "fourier" and model.field_size == {"SO2": 7, "O2": 14}[group]
    x = torch.randn(2, 3, 64, 64)
    _assert_exact_through_training(model, x, grid_group, group)
    with torch.no_grad():
        assert _rel(model.export()(x), model(x)) <= 1e-5


# --------------------------------------------------------------------------------------------- errors & contract
def test_errors_name_what_is_supported() -> None:
    with pytest.raises(ValueError, match=r"unknown group 'X4'.*C4.*D4.*D8"):
        EscnnUNet(group="X4")
    with pytest.raises(ValueError, match=r"unknown backend 'tf'.*escnn.*e2cnn"):
        EscnnUNet(backend="tf")
    with pytest.raises(ValueError, match="unknown pool"):
        EscnnUNet(pool="min")
    with pytest.raises(ValueError, match=r"SO2 needs backend='escnn'.*e2cnn"):
        EscnnUNet(group="SO2", backend="e2cnn", width=8, depth=1)
    with pytest.raises(ValueError, match=r"group SO2 needs fields='fourier'"):
        EscnnUNet(group="SO2", fields="regular")
    with pytest.raises(ValueError, match=r"group D4 needs fields='regular'"):
        EscnnUNet(group="D4", fields="fourier")
    with pytest.raises(ValueError, match=r"fourier fields need pool='antialiased'.*pool='max'"):
        EscnnUNet(group="O2", pool="max")
    with pytest.raises(ValueError, match="fourier_samples a multiple of 4"):
        EscnnUNet(group="SO2", fourier_samples=10)
    model = EscnnUNet(width=8, depth=2, group="C4")
    with pytest.raises(ValueError, match="multiple of 4"):
        model(torch.randn(1, 3, 10, 12))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 8, 8))
    padded = EscnnUNet(width=8, depth=2, group="C4", pad=True)
    assert padded(torch.randn(1, 3, 10, 13)).shape == (1, 3, 10, 13)


def test_missing_backend_names_the_package() -> None:
    result = _run_python("""
        import sys
        sys.modules["e2cnn"] = None
        from model.escnnUnet import EscnnUNet
        try:
            EscnnUNet(backend="e2cnn", width=8, depth=1)
        except ImportError as err:
            print("ERR", err)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ERR" in result.stdout and "pip install e2cnn" in result.stdout


def test_registry_alias_and_width() -> None:
    assert escnnUnetVariant is EscnnUNet
    model = build_model("escnn_unet", width=32, depth=2, group="C8", backend="e2cnn")
    assert isinstance(model, EscnnUNet) and model.group == "C8"
    assert model.level_fields == [4, 8, 16]  # width counts channels: 32 / |C8| = 4 fields of 8 channels
    plain = UNet(width=32, depth=2)
    assert count_parameters(model) < count_parameters(plain)


@pytest.mark.slow
def test_width_for_params_equal_parameter_d4() -> None:
    target = count_parameters(UNet(width=32, depth=4))
    width = width_for_params("escnn_unet", target, group="D4", depth=4)
    n = count_parameters(EscnnUNet(width=width, depth=4, group="D4"))
    assert abs(n - target) / target <= 0.05, (width, n, target)


def test_he_init_keeps_escnn_activation_scale() -> None:
    """The fast init preserves the activations' scale through the layers, comparable to escnn's own init.

    Eval mode at init: batch norm is the identity, so the RMS after each ReLU shows the init alone.
    """
    x = torch.randn(2, 3, 32, 32)
    rms: dict[str, list[list[float]]] = {"he": [], "escnn": []}
    for init in rms:
        for seed in range(2):
            torch.manual_seed(seed)
            m = EscnnUNet(width=16, depth=2, group="D4", init=init).eval()
            t, seq = m._enn.GeometricTensor(x, m.in_type), []
            with torch.no_grad():
                for mod in [*m.inc.children(), *m.downs[0][1].children()]:
                    t = mod(t)
                    if type(mod).__name__ == "ReLU":
                        seq.append(float(t.tensor.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()))
            rms[init].append(seq)
    he = [sum(v) / len(v) for v in zip(*rms["he"])]
    escnn = [sum(v) / len(v) for v in zip(*rms["escnn"])]
    print("RMS after each ReLU / input RMS: he", he, "escnn", escnn)
    assert all(0.5 <= r <= 2.0 for r in he), he  # variance preserving through 4 conv layers
    assert 1 / 2.5 <= he[0] / escnn[0] <= 2.5, (he, escnn)  # same scale as escnn's init at the first layer


# ------------------------------------------------------------------------------ approximate (non-grid) angles
NON_GRID_CASES = (("C8", (45.0,)), ("D8", (45.0,)), ("C16", (45.0, 22.5)), ("SO2", (45.0, 22.5)), ("O2", (45.0,)))


@pytest.mark.slow
def test_non_grid_rotations_beat_the_plain_unet(record_property) -> None:
    """45° (C8, D8, C16, SO2, O2) and 22.5° (C16, SO2) errors on smooth input ≤ 0.5 × the plain U-Net's (same width
    and depth).

    Protocol (model/equivariance.py): Gaussian-blurred noise of size 128 (σ = 3 px), its inscribed disk on a
    192² zero canvas (so rotation moves no content out of or into the frame, and the frame, where every conv
    zero-pads, is 32 px away), measured inside the 128 disk; random untrained nets with batch norm calibrated on
    the input, three seeds averaged; both the relative max error and the relative L2 error must be ≤ 0.5 × plain.
    ``benchmarks/steerable.py --non-grid`` prints the same numbers and those on the bare 128² square (corners leave
    the frame), where the frame's own error dominates the max near the disk's edge for every model.
    """
    setups = {"canvas192": (disk_on_canvas(smooth_noise(128), 192), 32 + 2.0)}
    report, failures = {}, []
    for setup, (x, margin) in setups.items():
        plain = mean_rotation_errors(lambda: UNet(width=32, depth=3), x, (45.0, 22.5), margin)
        report[setup] = {"plain": plain}
        for group, angles in NON_GRID_CASES:
            errs = mean_rotation_errors(lambda g=group: EscnnUNet(width=32, depth=3, group=g), x, angles, margin)
            report[setup][group] = errs
            for a in angles:
                for norm in ("max", "l2"):
                    ratio = errs[a][norm] / plain[a][norm]
                    errs[a][f"{norm}_ratio"] = ratio
                    if ratio > 0.5:
                        failures.append(f"{group} {a}° {norm}: {errs[a][norm]:.3f} vs plain {plain[a][norm]:.3f} "
                                        f"({ratio:.2f}×)")
    text = json.dumps({s: {m: {str(a): {k: round(v, 3) for k, v in d.items()} for a, d in e.items()}
                           for m, e in r.items()} for s, r in report.items()})
    record_property("rotation_errors", text)
    print(text)
    assert not failures, failures


def test_irrep_batchnorm_and_fourier_relu_are_equivariant_for_every_angle() -> None:
    """The Fourier-field layers commute with ρ(g) on the fibres for any rotation g of SO(2) (batch statistics and
    running statistics alike), and FourierReLU computes escnn's FourierPointwise."""
    from escnn import gspaces, nn as enn

    from model.escnn_backend import invariant_projector as _invariant_projector
    from model.field_layers import FourierReLU, IrrepBatchNorm2d

    gspace = gspaces.rot2dOnR2(-1, maximum_frequency=6)
    group = gspace.fibergroup
    irreps = group.bl_irreps(3)
    rho = group.spectral_regular_representation(*irreps)
    ftype = enn.FieldType(gspace, [rho] * 3)
    torch.manual_seed(0)
    x = torch.randn(4, 21, 5, 6) * 2 + 1
    bn = IrrepBatchNorm2d(3, rho.size, _invariant_projector(rho))
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.normal_()
    library = enn.FourierPointwise(gspace, 3, irreps, function="p_relu", type="regular", N=16)
    relu = FourierReLU(rho.size, library.A.shape[0])
    relu.A.copy_(library.A)
    relu.Ainv.copy_(library.Ainv)
    assert _rel(relu(x), library(enn.GeometricTensor(x, ftype)).tensor) <= 1e-6

    def fibre(v: torch.Tensor, angle: float) -> torch.Tensor:  # ρ(g) on every field, pixels unchanged
        r = torch.as_tensor(rho(group.element(angle)), dtype=v.dtype)
        return torch.einsum("ij,bfjhw->bfihw", r, v.view(4, 3, rho.size, 5, 6)).reshape(v.shape)

    for angle in (0.3, math.pi / 4, 2.0):
        for mode in ("train", "eval"):
            bn.train(mode == "train")
            assert _rel(bn(fibre(x, angle)), fibre(bn(x), angle)) <= 1e-5, (angle, mode)
    assert _rel(relu(fibre(x, math.pi / 2)), fibre(relu(x), math.pi / 2)) <= 1e-5  # a sampled rotation: exact
    assert _rel(relu(fibre(x, 0.3)), fibre(relu(x), 0.3)) <= 0.2  # between samples: approximate

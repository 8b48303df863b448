"""Steerable U-Net (model/escnnUnet.py, model/escnn_export.py): export to plain torch for every group and both
backends, the field batch norm against escnn's InnerBatchNorm, state dicts across modes and processes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("escnn")
pytest.importorskip("e2cnn")

from model.escnnUnet import BACKENDS, EscnnUNet  # noqa: E402
from model.field_layers import RegularFieldBatchNorm2d  # noqa: E402
from model.groups import GROUPS  # noqa: E402
from tests.test_model_helpers import (  # noqa: E402
    one_field as _one_field, rel as _rel, run_python as _run_python, train_steps as _train_steps,
)


# ------------------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("group", GROUPS)
def test_export_matches_every_group(group: str) -> None:
    torch.manual_seed(0)
    model = EscnnUNet(width=_one_field(group), depth=1, group=group, pool="antialiased")
    x = torch.randn(2, 3, 16, 16)
    _train_steps(model, x, steps=1)  # non-trivial batch-norm statistics
    model.eval()
    exported = model.export()
    assert not model.training, "export() must leave the model's mode unchanged"
    assert all(type(m).__module__.split(".")[0] in ("torch", "model") for m in exported.modules())
    with torch.no_grad():
        y, y_exp = model(x), exported(x)
    assert y_exp.shape == (2, 3, 16, 16)
    assert _rel(y_exp, y) <= 1e-5


@pytest.mark.parametrize("norm", ["field", "inner"])
def test_export_e2cnn_and_inner_batchnorm(norm: str) -> None:
    torch.manual_seed(0)
    for backend in BACKENDS:
        model = EscnnUNet(width=8, depth=1, group="D4", backend=backend, norm=norm)
        x = torch.randn(2, 3, 16, 16)
        _train_steps(model, x, steps=1)
        model.eval()
        with torch.no_grad():
            assert _rel(model.export()(x), model(x)) <= 1e-5


def test_field_batchnorm_is_inner_batchnorm() -> None:
    """RegularFieldBatchNorm2d computes escnn's InnerBatchNorm (outputs and running statistics)."""
    from escnn import gspaces, nn as enn

    gspace = gspaces.flipRot2dOnR2(4)
    ftype = enn.FieldType(gspace, [gspace.regular_repr] * 3)
    inner = enn.InnerBatchNorm(ftype)
    ours = RegularFieldBatchNorm2d(3, 8)
    x = torch.randn(4, 24, 9, 7) * 3 + torch.arange(24.0).view(1, 24, 1, 1)
    for _ in range(2):
        y_inner = inner(enn.GeometricTensor(x, ftype)).tensor
        y_ours = ours(x)
        assert _rel(y_ours, y_inner) <= 1e-5
    bn = inner.batch_norm_modules[0] if hasattr(inner, "batch_norm_modules") else \
        [m for m in inner.modules() if isinstance(m, torch.nn.BatchNorm3d)][0]
    assert torch.allclose(ours.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    inner.eval(), ours.eval()
    assert _rel(ours(x), inner(enn.GeometricTensor(x, ftype)).tensor) <= 1e-5


def test_field_batchnorm_kernels_agree() -> None:
    """The native-kernel path (CPU, eval) and the per-channel-moments path (GPU training) give the same outputs,
    input and affine gradients, and running statistics."""
    torch.manual_seed(0)
    x = (torch.randn(2, 24, 11, 6) * 2 + torch.arange(24.0).view(1, 24, 1, 1)).requires_grad_()
    g = torch.randn(2, 24, 11, 6)
    native, moments = RegularFieldBatchNorm2d(3, 8), RegularFieldBatchNorm2d(3, 8)
    with torch.no_grad():
        for bn in (native, moments):
            bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
            bn.bias.copy_(torch.tensor([-1.0, 0.0, 1.0]))
    results = []
    for bn, run in ((native, native), (moments, moments._moments_forward)):
        x.grad = None
        y = run(x)
        y.backward(g)
        results.append((y.detach(), x.grad.clone(), bn.weight.grad.clone(), bn.bias.grad.clone()))
    for a, b in zip(*results):
        assert _rel(a, b) <= 1e-5
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.allclose(getattr(native, name).float(), getattr(moments, name).float(), rtol=1e-5, atol=1e-6), name


# ------------------------------------------------------------------------------------------ state dict & loading
def test_state_dict_loads_in_a_fresh_process_and_export_without_escnn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EscnnUNet(width=16, depth=2, group="D4")
    x = torch.randn(2, 3, 32, 32)
    _train_steps(model, x, steps=1)
    model.eval()
    with torch.no_grad():
        y = model(x)
    exported = model.export()
    sd = model.state_dict()
    assert not any(k.endswith((".filter", "sampled_basis")) for k in sd), "derived escnn buffers leaked into state_dict"
    torch.save({"sd": sd, "x": x, "y": y, "exp_sd": exported.state_dict(), "config": exported.config},
               tmp_path / "ckpt.pt")
    result = _run_python(f"""
        import torch
        from model.escnnUnet import EscnnUNet
        d = torch.load({str(tmp_path / "ckpt.pt")!r})
        torch.manual_seed(123)
        m = EscnnUNet(width=16, depth=2, group="D4")
        m.load_state_dict(d["sd"])
        m.eval()
        with torch.no_grad():
            print("MAXDIFF", float((m(d["x"]) - d["y"]).abs().max()))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("MAXDIFF")[1]) == 0.0
    # the exported model: no escnn / e2cnn importable in that process
    result = _run_python(f"""
        import sys
        sys.modules["escnn"] = None; sys.modules["e2cnn"] = None  # importing them now raises ImportError
        import torch
        from model.escnnUnet import ExportedEscnnUNet
        d = torch.load({str(tmp_path / "ckpt.pt")!r})
        net = ExportedEscnnUNet(**d["config"]); net.load_state_dict(d["exp_sd"]); net.eval()
        with torch.no_grad():
            y = net(d["x"])
        print("REL", float((y - d["y"]).abs().max() / d["y"].abs().max()))
        print("ESCNN", any(k.startswith("escnn") and sys.modules[k] is not None for k in sys.modules))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.split("REL")[1].split()[0]) <= 1e-5
    assert "ESCNN False" in result.stdout


def test_state_dict_modes_round_trip() -> None:
    """escnn's eval-mode filter cache does not leak: state_dicts load across modes, also as a submodule."""
    torch.manual_seed(0)
    a = EscnnUNet(width=8, depth=1, group="D4")
    b = EscnnUNet(width=8, depth=1, group="D4").eval()
    b.load_state_dict(a.state_dict())  # train-mode dict into an eval-mode model (its cached filter is rebuilt)
    a.eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    # nested (as in a LightningModule): an eval-mode dict, with escnn's filter cache, into a train-mode wrapper
    wrapper = torch.nn.Sequential(EscnnUNet(width=8, depth=1, group="D4"))
    wrapper.load_state_dict(torch.nn.Sequential(a).state_dict())
    wrapper.eval()
    with torch.no_grad():
        assert torch.equal(wrapper(x), a(x))
    import copy

    c = copy.deepcopy(a)  # eval mode: escnn's cached filters are detached, so the model can be copied
    with torch.no_grad():
        assert torch.equal(c(x), a(x))
    stale = {**a.state_dict(), "inc.0.filter": torch.zeros(1)}  # stale derived buffers are ignored
    b.load_state_dict(stale)
    with pytest.raises(RuntimeError, match="Missing key"):
        b.load_state_dict({})

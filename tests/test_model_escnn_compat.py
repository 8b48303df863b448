"""escnn's SVD fix and disk cache (model/escnn_compat.py): every group builds in a fresh cache; without the fix it fails."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("escnn")
pytest.importorskip("e2cnn")

from tests.test_model_helpers import run_python as _run_python  # noqa: E402


# ----------------------------------------------------------------------- escnn's SVD fix, in a fresh disk cache
@pytest.mark.slow
def test_every_group_builds_in_a_fresh_escnn_cache(tmp_path: Path) -> None:
    """With escnn's disk cache pointed at an empty folder (a warm cache would hide the scikit-learn failure)."""
    cache = tmp_path / "escnn_cache"
    result = _run_python(f"""
        import sys
        import torch
        from model.escnnUnet import EscnnUNet, GROUPS, CONTINUOUS_GROUPS, group_order
        from model import escnn_compat
        assert escnn_compat.cache_dir() == {str(cache)!r}, escnn_compat.cache_dir()
        numerical = sys.modules.get("escnn.group._numerical")  # the fix is in place: escnn's exact SciPy path
        assert numerical is not None and getattr(numerical, "randomized_svd", None) is None
        for g in GROUPS:
            m = EscnnUNet(width=1 if g in CONTINUOUS_GROUPS else group_order(g), depth=1, group=g).eval()
            assert m(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)
        print("OK")
    """, env={"ESCNN_CACHE_DIR": str(cache)})
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]
    assert any(p.is_file() for p in cache.rglob("output.pkl")), "escnn wrote nothing to the fresh cache folder"


def test_without_the_fix_a_fresh_cache_fails(tmp_path: Path) -> None:
    """Control: escnn's scikit-learn path in a fresh cache raises the np.matrix TypeError the fix avoids."""
    result = _run_python(f"""
        import escnn.group._numerical as numerical
        original = numerical.randomized_svd
        from model import escnn_compat
        escnn_compat.patch_escnn()
        escnn_compat.set_cache_dir({str(tmp_path / "cache")!r})
        numerical.randomized_svd = original  # undo the fix
        from escnn import gspaces, nn as enn
        g = gspaces.flipRot2dOnR2(4)
        t = enn.FieldType(g, [g.regular_repr])
        try:
            enn.R2Conv(t, t, 3)
            print("BUILT")
        except TypeError as err:
            print("TYPEERROR", err)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    if "BUILT" in result.stdout:
        pytest.skip("this scikit-learn accepts np.matrix in randomized_svd; the fix is harmless but not needed")
    assert "np.matrix" in result.stdout

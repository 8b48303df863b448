"""util.numerics: correctly rounded square roots (the portable modes), the modes' variables, and how a study run
and a reproduce pass them to their training subprocesses."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from util.numerics import MODES, apply_from_env, exact_sqrt, in_mode, mode_env, mode_settings
from util.study import child_env
from util.study.reproduce import recorded_numerics
from util.training.runs import NUMERICS_VARIABLES

REPO = Path(__file__).resolve().parents[1]


def _correctly_rounded(x: np.ndarray) -> np.ndarray:
    # float64 has more than 2·24 + 2 bits, so rounding the float64 root to float32 is the correctly rounded root
    with np.errstate(invalid="ignore"):
        return np.sqrt(x.astype(np.float64)).astype(np.float32)


def test_exact_sqrt_is_correctly_rounded_everywhere():
    g = torch.Generator().manual_seed(0)
    # uniform values, values spread over every exponent, subnormals, and the neighbours of perfect squares
    squares = torch.arange(1, 5000, dtype=torch.float64).pow(2).float()
    x = torch.cat([torch.rand(200_000, generator=g) + 0.1,
                   torch.exp(torch.empty(200_000).uniform_(-80, 80, generator=g)),
                   torch.tensor([1e-45, 3e-42, 1.17e-38, 3.4e38]),
                   squares, torch.nextafter(squares, torch.zeros_like(squares)),
                   torch.nextafter(squares, torch.full_like(squares, math.inf))])
    got = exact_sqrt(x).numpy()
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.array_equal(got, _correctly_rounded(x.numpy()))
    # zeros, infinities, negatives and NaN: what torch.sqrt gives
    odd = torch.tensor([0.0, -0.0, math.inf, -1.0, math.nan])
    assert torch.equal(exact_sqrt(odd).isnan(), torch.sqrt(odd).isnan())
    assert exact_sqrt(odd)[:3].tolist() == [0.0, -0.0, math.inf]
    assert torch.equal(exact_sqrt(torch.tensor([2.0], dtype=torch.float64)), torch.sqrt(torch.tensor([2.0],
                                                                                       dtype=torch.float64)))


def test_exact_sqrt_gradient_is_that_of_sqrt_on_the_rounded_root():
    x = torch.tensor([0.25, 2.0, 9.0, 1e-3], requires_grad=True)
    y = exact_sqrt(x)
    y.sum().backward()
    assert torch.equal(x.grad, 1 / (2 * y.detach()))


def test_use_exact_sqrt_routes_adams_square_roots_in_a_fresh_process():
    """A subprocess with NUMERICS_EXACT_SQRT=1: torch.sqrt, Tensor.sqrt/sqrt_ and _foreach_sqrt all give the
    correctly rounded root."""
    code = r"""
import json, numpy as np, torch
from util.numerics import apply_from_env
assert apply_from_env()
torch.manual_seed(0)
x = torch.rand(50_000) + 0.1
ref = np.sqrt(x.numpy().astype(np.float64)).astype(np.float32)
ok = [bool(np.array_equal(t.numpy(), ref)) for t in
      (torch.sqrt(x), x.sqrt(), x.clone().sqrt_(), torch._foreach_sqrt([x])[0])]
print(json.dumps(ok))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**child_env(1, None), "NUMERICS_EXACT_SQRT": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [True, True, True, True]


def test_apply_from_env_needs_the_variable():
    assert apply_from_env({}) is False
    assert apply_from_env({"NUMERICS_EXACT_SQRT": "0"}) is False


def test_modes_and_their_variables():
    assert mode_settings("native") == {}
    assert mode_settings("portable") == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                         "MKL_CBWR": "COMPATIBLE", "NUMERICS_EXACT_SQRT": "1"}
    with pytest.raises(ValueError, match="unknown numerics mode 'fast'.*native, avx2, compatible, portable"):
        mode_settings("fast")
    assert set(MODES) == {"native", "avx2", "compatible", "portable", "compatible_exact"}


def test_child_env_replaces_the_numerics_variables(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX512")
    monkeypatch.setenv("OPENCV_CPU_DISABLE", "AVX2")
    assert child_env(1, None)["MKL_CBWR"] == "AVX512"  # no mode: the shell's own settings
    env = child_env(2, None, mode_settings("portable"))
    assert env["MKL_CBWR"] == "COMPATIBLE" and env["NUMERICS_EXACT_SQRT"] == "1"
    assert "OPENCV_CPU_DISABLE" not in env and env["OMP_NUM_THREADS"] == "2"
    native = child_env(1, None, {})  # a row trained with nothing set: nothing set in its rerun
    assert "MKL_CBWR" not in native and "OPENCV_CPU_DISABLE" not in native


def test_reproduce_uses_the_rows_recorded_settings():
    portable = {"environment": {"numerics_settings": mode_settings("portable")}}
    assert recorded_numerics(portable) == mode_settings("portable")
    assert recorded_numerics({"environment": {"numerics_settings": {}}}) == {}
    assert recorded_numerics({"environment": {"cpu_model": "AMD EPYC"}}) is None  # older rows: not recorded
    assert recorded_numerics(None) is None


def test_portable_study_is_brca_cpu_retrained_under_the_portable_mode():
    """configs/study/brca_cpu_portable.yaml extends brca_cpu.yaml: the same grid, its own name and numerics;
    the runner gives its trainings the portable variables, and `run --numerics` overrides the study's."""
    from util.study import Runner, expand_points, load_study

    cpu = load_study(REPO / "configs" / "study" / "brca_cpu.yaml")
    portable = load_study(REPO / "configs" / "study" / "brca_cpu_portable.yaml")
    assert (portable.name, portable.numerics, cpu.numerics) == ("brca_cpu_portable", "portable", None)
    for key in ("base", "overrides", "max_steps", "val_every_steps", "arms", "fractions", "seeds", "lr_values",
                "lr_fraction", "lr_seed", "contrasts", "target_mf1", "bootstrap_replicates", "bootstrap_seed"):
        assert getattr(portable, key) == getattr(cpu, key), key
    assert [p.id for p in expand_points(portable, {})] == [p.id for p in expand_points(cpu, {})]
    assert Runner(portable).numerics == mode_settings("portable")
    assert Runner(portable, numerics="native").numerics == {}
    assert Runner(cpu).numerics is None  # no mode: the shell's own variables


def test_study_numerics_and_extends_errors_are_named(tmp_path):
    from util.config import ConfigError
    from util.study import load_study

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {REPO / 'configs' / 'study' / 'brca_cpu.yaml'}\nstudy: x\nnumerics: fast\n")
    with pytest.raises(ConfigError, match=r"numerics 'fast' is not a mode of util.numerics; expected one of native"):
        load_study(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("extends: nowhere.yaml\nstudy: y\n")
    with pytest.raises(ConfigError, match=r"extends 'nowhere.yaml', but .*nowhere.yaml does not exist"):
        load_study(missing)
    chained = tmp_path / "chained.yaml"
    chained.write_text(f"extends: {REPO / 'configs' / 'study' / 'brca_cpu_portable.yaml'}\nstudy: z\n")
    with pytest.raises(ConfigError, match="extends another file"):
        load_study(chained)


def test_plan_times_a_study_under_its_numerics_mode(tiny_ocelot_root, tmp_path, capfd, monkeypatch):
    """``plan`` of a study with ``numerics: portable`` times its arms in a process started under that mode."""
    from tests.test_study import write_study
    from util.study.__main__ import main as study_main

    for k in NUMERICS_VARIABLES:
        monkeypatch.delenv(k, raising=False)
    cfg = write_study(tmp_path / "s.yaml", tiny_ocelot_root, tmp_path, numerics="portable",
                      arms=[{"label": "plain_none", "preset": "none"}], contrasts=[])
    assert study_main(["plan", str(cfg), "--steps", "1", "--threads", "1"]) == 0
    out = capfd.readouterr().out
    assert "CPU numerics mode portable (timed under it)" in out and "s/step" in out
    assert study_main(["plan", str(cfg), "--no-timing"]) == 0  # nothing timed: no process started for it
    out = capfd.readouterr().out
    assert "CPU numerics mode portable\n" in out and "timed under it" not in out


def test_in_mode_compares_exactly_the_numerics_variables():
    env = {"PATH": "/bin", **mode_settings("portable")}
    assert in_mode(env, "portable", NUMERICS_VARIABLES) and not in_mode(env, "avx2", NUMERICS_VARIABLES)
    assert not in_mode({**env, "MKL_DEBUG_CPU_TYPE": "5"}, "portable", NUMERICS_VARIABLES)  # one more variable
    assert in_mode({"PATH": "/bin"}, "native", NUMERICS_VARIABLES)
    # every mode's variables are numerics variables: rows record them, child_env replaces them, and plan's child
    # process (started until in_mode holds) reaches the mode
    for mode in MODES:
        assert set(mode_settings(mode)) <= set(NUMERICS_VARIABLES), mode
        assert in_mode(mode_env({"PATH": "/bin", "MKL_CBWR": "AVX512"}, mode, NUMERICS_VARIABLES), mode,
                       NUMERICS_VARIABLES)

"""benchmarks/numerics.py: the numerics fingerprint is deterministic, separates data from weights, records and
compares against a reference CSV, and rejects bad arguments with a clear message."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
from system_tools import apt_tool

REPO = Path(__file__).resolve().parents[1]
TINY = ["configs/default.yaml", "data.crop_size=32", "data.batch_size=2", "model.kwargs.width=4",
        "model.kwargs.depth=2", "max_steps=20"]


@pytest.fixture(scope="module")
def numerics():
    spec = importlib.util.spec_from_file_location("numerics", REPO / "benchmarks" / "numerics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(mode="native", cpu="AMD EPYC 7B13", cap="AVX2", weights="aaaa", **kw):
    return {"mode": mode, "point": "p", "steps": "6", "torch": "2.13.0+cpu", "weights_sha1": weights,
            "cpu_model": cpu, "cpu_capability": cap, **kw}


def test_compare_names_machines_with_the_same_and_other_hashes(numerics):
    ref = [_row(), _row(cpu="Intel Xeon", cap="AVX512", weights="bbbb"), _row(mode="avx2", weights="cccc")]
    assert numerics.compare(_row(cpu="here"), ref) == "same as AMD EPYC 7B13 (AVX2); differs from Intel Xeon (AVX512)"
    assert numerics.compare(_row(mode="avx2", weights="cccc"), ref) == "same as AMD EPYC 7B13 (AVX2)"
    assert numerics.compare(_row(mode="compatible"), ref) == "no reference"
    assert numerics.compare({**_row(), "torch": "2.14.0"}, ref) == "no reference"  # other torch: other kernels


@pytest.mark.slow  # four 2-step trainings of a tiny net in subprocesses (about 40 s)
def test_fingerprint_is_deterministic_and_recorded(numerics, tmp_path, capsys):
    record = tmp_path / "fp.csv"
    args = [*TINY, "--steps", "2", "--modes", "native,avx2", "--reference", str(record), "--record", str(record)]
    assert numerics.main(args) == 0
    first = capsys.readouterr().out
    assert "no reference" in first and f"recorded 2 row(s) in {record}" in first
    rows = list(csv.DictReader(record.open()))
    assert [r["mode"] for r in rows] == ["native", "avx2"]
    assert rows[1]["settings"] == "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2"
    assert rows[0]["data_sha1"] == rows[1]["data_sha1"]  # the data pipeline does not depend on these kernels
    assert all(len(r["weights_sha1"]) == 16 and float(r["s_per_step"]) > 0 for r in rows)
    assert numerics.main(args) == 0  # the same machine again: the same hashes
    second = capsys.readouterr().out
    for r in rows:  # each mode's row names the kernels it ran (avx2: AVX2 even on an AVX-512 CPU)
        assert f"same as {r['cpu_model']} ({r['cpu_capability']})" in second
    assert second.count("same as") == 2 and "differs" not in second


def test_bad_arguments_are_named(numerics, capsys):
    with pytest.raises(SystemExit):
        numerics.main([*TINY, "--modes", "native,fast"])
    assert "unknown mode(s) fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        numerics.main([*TINY, "--steps", "0"])
    assert "--steps must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="'nope' is not a point of configs/study/brca_cpu.yaml"):
        numerics.load_target(["configs/study/brca_cpu.yaml", "nope"])


@pytest.fixture(scope="module")
def qemu() -> str:
    """QEMU's user-mode emulator for ``--emulate`` (Debian package qemu-user; installed as root when missing)."""
    return apt_tool("qemu-x86_64", "qemu-user")


def test_emulate_names_a_missing_qemu(numerics, monkeypatch):
    monkeypatch.setattr(numerics.shutil, "which", lambda exe: None)
    with pytest.raises(SystemExit, match=r"qemu-x86_64 .*apt-get install qemu-user"):
        numerics.qemu_command("EPYC-Rome-v1")


@pytest.mark.emulator
def test_emulate_names_an_unknown_cpu_model(numerics, qemu):
    with pytest.raises(SystemExit, match=r"--emulate 'Pentium-9000': qemu-x86_64 has no such CPU model; e\.g\. .*EPYC"):
        numerics.main([*TINY, "--emulate", "Pentium-9000"])
    assert numerics.qemu_command("EPYC-Rome-v1")[1:] == ["-cpu", "EPYC-Rome-v1"]


@pytest.mark.slow  # a 1-step training of a tiny net here and one under the emulator (about two minutes)
@pytest.mark.emulator
def test_emulated_fingerprint_runs_as_the_emulated_cpu(numerics, qemu, tmp_path, capsys):
    record = tmp_path / "fp.csv"
    one = [*TINY, "--steps", "1", "--modes", "native", "--reference", str(record), "--record", str(record)]
    assert numerics.main(one) == 0
    assert numerics.main([*one, "--emulate", "EPYC-Rome-v1"]) == 0
    out = capsys.readouterr().out
    host, emulated = csv.DictReader(record.open())
    # torch dispatches on the emulated CPUID (an AMD EPYC Rome: AVX2, whatever the host has); the row says so
    assert (emulated["cpu_model"], emulated["cpu_capability"]) == ("qemu EPYC-Rome-v1", "AVX2")
    assert host["cpu_model"] != emulated["cpu_model"]
    assert "qemu EPYC-Rome-v1 (AVX2)" in out and len(emulated["weights_sha1"]) == 16
    assert float(emulated["last_loss"]) == pytest.approx(float(host["last_loss"]), rel=1e-3)  # the same training

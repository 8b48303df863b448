"""Tracking: a real Comet offline archive in the run folder; the API key never leaks; CSV always."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from util.config import load_config
from util.tracking import CometTracker, find_secret, make_loggers, resolve_mode
from util.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"

pytest.importorskip("comet_ml")


def _archive_messages(zip_path: Path) -> list[dict]:
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
        assert "messages.json" in names, names
        return [json.loads(line) for line in z.read("messages.json").decode().splitlines() if line.strip()]


def test_mode_resolution(monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    monkeypatch.setenv("COMET_CONFIG", "/nonexistent/.comet.config")
    assert resolve_mode("auto") == "csv"
    assert resolve_mode("offline") == "offline"
    monkeypatch.setenv("COMET_API_KEY", "x" * 20)
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError, match="tracking"):
        resolve_mode("wandb")


def test_offline_archive_holds_the_logged_metrics(tiny_ocelot_root, tmp_path, monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    cfg = load_config(TINY, [f"data.root={tiny_ocelot_root}", f"runs_dir={tmp_path}", "tracking=offline",
                             "max_steps=4", "eval_transforms=[]"])
    res = train(cfg, quiet=True)
    zips = sorted((res.run_dir / "comet").glob("*.zip"))
    assert len(zips) == 1, list((res.run_dir).rglob("*"))
    msgs = _archive_messages(zips[0])
    metric_names = {m["payload"]["metric"]["metricName"] for m in msgs if m["type"] == "metric_msg"}
    assert {"train/loss", "val/mF1", "val/F1_BC", "val/dice_TC"} <= metric_names, metric_names
    assert any(n.startswith("test.") and n.endswith("mF1") for n in metric_names), metric_names
    params = {m["payload"]["param"]["paramName"] for m in msgs if m["type"] == "parameter_msg"}
    assert "learning_rate" in params and "model.name" in params
    # the logged val mF1 values are the ones in history.csv
    logged = [m["payload"]["metric"]["metricValue"] for m in msgs
              if m["type"] == "metric_msg" and m["payload"]["metric"]["metricName"] == "val/mF1"]
    hist = (res.run_dir / "history.csv").read_text().splitlines()[1:]
    assert [round(float(v), 6) for v in logged] == [round(float(r.split(",")[4]), 6) for r in hist]
    # CSV always
    assert list((res.run_dir / "logs").glob("v*/metrics.csv"))


def test_csv_only_mode_makes_no_comet_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("COMET_API_KEY", raising=False)
    loggers = make_loggers("csv", tmp_path)
    assert len(loggers) == 1 and not any(isinstance(lg, CometTracker) for lg in loggers)


def test_find_secret_detects_plain_and_zipped(tmp_path):
    (tmp_path / "a.txt").write_text("nothing here")
    assert find_secret(tmp_path, "s3cr3t-value") == []
    with zipfile.ZipFile(tmp_path / "b.zip", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("inner.json", '{"k": "s3cr3t-value"}')
    assert find_secret(tmp_path, "s3cr3t-value") == [tmp_path / "b.zip"]


@pytest.mark.slow
def test_fake_key_online_falls_back_offline_and_never_leaks(tiny_ocelot_root, tmp_path):
    """Comet online is unreachable here: the run must fall back to an offline archive, and the (fake) key must
    not appear in any file of the run folder nor in anything printed."""
    fake = "FAKEKEY-" + os.urandom(8).hex()
    # one connection attempt instead of Comet's retries with back-off (about 30 s here): the fallback is the same
    env = {**os.environ, "COMET_API_KEY": fake, "PYTHONUNBUFFERED": "1", "COMET_HTTP_SESSION_RETRY_TOTAL": "1",
           "COMET_GET_OR_ADD_EXPERIMENT_RETRY_TOTAL": "1"}
    res = subprocess.run([sys.executable, "-m", "util.train", str(TINY), f"data.root={tiny_ocelot_root}",
                          f"runs_dir={tmp_path}", "tracking=online", "max_steps=2", "eval_transforms=[]"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert fake not in res.stdout and fake not in res.stderr
    run_dir = next((tmp_path / "tiny").iterdir())
    assert find_secret(run_dir, fake) == []
    assert find_secret(run_dir, fake[8:]) == []
    zips = list((run_dir / "comet").glob("*.zip"))
    assert zips, "no offline archive after the online fallback"
    names = {m["payload"]["metric"]["metricName"] for m in _archive_messages(zips[0]) if m["type"] == "metric_msg"}
    assert "val/mF1" in names
    assert "offline" in res.stderr.lower()

"""Experiment tracking: Comet online → Comet offline → CSV (always).

Modes (``ExperimentConfig.tracking``):

* ``auto``: Comet online when ``COMET_API_KEY`` is set (or Comet's own config file holds a key), else CSV only.
* ``online``: Comet online; if the server cannot be reached (or the key is refused) it falls back to offline.
* ``offline``: the real ``comet_ml.OfflineExperiment``, writing its archive (``<run>/comet/<id>.zip``, upload
  later with ``comet upload``) into the run folder.
* ``csv``: no Comet.

A CSV log (Lightning's ``CSVLogger``, ``<run>/logs/v<session>/metrics.csv``) is written in every mode.
The API key is read only by ``comet_ml`` itself (environment or its config file). This module never reads its
value except to check that it is set and, in :func:`find_secret`, to make sure it was written nowhere.
"""
from __future__ import annotations

import logging
import os
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_only

from util.flatten import flatten_dict

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "csv")
_COMET_FLAGS = dict(log_code=False, log_graph=False, parse_args=False, auto_output_logging=None,
                    log_env_details=False, log_git_metadata=False, log_git_patch=False, auto_param_logging=False,
                    auto_metric_logging=False, display_summary_level=0)


def comet_key_available() -> bool:
    """True when Comet would find an API key (environment or Comet's config file); the value is not returned."""
    if os.environ.get("COMET_API_KEY"):
        return True
    try:
        from comet_ml.config import get_config

        return bool(get_config("comet.api_key"))
    except Exception:  # comet_ml missing or its config unreadable
        return False


def resolve_mode(requested: str) -> str:
    """The mode actually attempted first: ``auto`` becomes ``online`` (key available) or ``csv``."""
    if requested not in MODES:
        raise ValueError(f"tracking={requested!r}: expected one of {', '.join(MODES)}")
    if requested == "auto":
        return "online" if comet_key_available() else "csv"
    return requested


class CometTracker(Logger):
    """A Lightning logger around a real ``comet_ml`` experiment (online, or offline into ``offline_dir``).

    The experiment is created on first use on global rank 0 only. An online experiment that is not alive after
    creation (no network, refused key) is ended and replaced by an ``OfflineExperiment``.
    """

    def __init__(self, mode: str, offline_dir: str | Path, project: str, workspace: str | None = None,
                 experiment_name: str | None = None, tags: list[str] | None = None):
        super().__init__()
        if mode not in ("online", "offline"):
            raise ValueError(f"CometTracker mode must be 'online' or 'offline', got {mode!r}")
        self.requested_mode = mode
        self.mode = mode
        self.offline_dir = Path(offline_dir)
        self.project = project
        self.workspace = workspace
        self.experiment_name = experiment_name
        self.tags = tags or []
        self._experiment = None

    @property
    def name(self) -> str:
        return "comet"

    @property
    def version(self) -> str:
        return self.mode

    @property
    @rank_zero_only
    def experiment(self):
        if self._experiment is None:
            self._experiment = self._create()
        return self._experiment

    def _create(self):
        _quiet_comet_env()
        import comet_ml

        exp = None
        if self.mode == "online":
            try:
                exp = comet_ml.Experiment(project_name=self.project, workspace=self.workspace, **_COMET_FLAGS)
                if not getattr(exp, "alive", False):
                    try:
                        exp.end()
                    except Exception:
                        pass
                    exp = None
            except Exception as e:  # noqa: BLE001 - any failure means "fall back", the reason is printed
                log.warning("Comet online failed (%s)", type(e).__name__)
                exp = None
            if exp is None:
                print("Comet online is not reachable; logging to a Comet offline archive instead", file=sys.stderr)
                self.mode = "offline"
        if exp is None:
            self.offline_dir.mkdir(parents=True, exist_ok=True)
            exp = comet_ml.OfflineExperiment(project_name=self.project, workspace=self.workspace,
                                             offline_directory=str(self.offline_dir), **_COMET_FLAGS)
        if self.experiment_name:
            exp.set_name(self.experiment_name)
        if self.tags:
            exp.add_tags(self.tags)
        return exp

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params)
        self.experiment.log_parameters(flatten_dict(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if k != "epoch"}
        epoch = metrics.get("epoch")
        self.experiment.log_metrics(clean, step=step, epoch=int(epoch) if epoch is not None else None)

    @rank_zero_only
    def log_summary(self, metrics: Mapping[str, Any]) -> None:
        """Final (test) metrics, logged as metrics and as 'others' for the experiment table."""
        flat = flatten_dict(dict(metrics))
        nums = {k: float(v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.experiment.log_metrics(nums)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Lightning calls this when ``fit`` ends; the experiment stays open after a success so that the test
        metrics logged afterwards land in the same experiment (:meth:`close` ends it)."""
        if status != "success":
            self.close()

    @rank_zero_only
    def close(self) -> None:
        """End the experiment (offline: writes the ``.zip`` archive)."""
        if self._experiment is not None:
            self._experiment.end()
            self._experiment = None


def _quiet_comet_env() -> None:
    """No error reporting to Comet's Sentry and no import-order auto-logging warnings (defaults only; a user's
    own settings win)."""
    os.environ.setdefault("COMET_ERROR_TRACKING_ENABLE", "false")
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")


def make_loggers(mode: str, run_dir: str | Path, project: str = "equivariant-ocelot",
                 workspace: str | None = None, experiment_name: str | None = None,
                 tags: list[str] | None = None) -> list[Logger]:
    """CSV logger (always, ``<run>/logs/v<k>/metrics.csv``) plus a :class:`CometTracker` unless the mode is ``csv``."""
    run_dir = Path(run_dir)
    # one CSV folder per session (a resumed run gets logs/v1, v2, ...; Lightning would overwrite otherwise)
    k = 0
    while (run_dir / "logs" / f"v{k}" / "metrics.csv").exists():
        k += 1
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="logs", version=f"v{k}")]
    resolved = resolve_mode(mode)
    if resolved in ("online", "offline"):
        _quiet_comet_env()
        try:
            import comet_ml  # noqa: F401
        except ImportError:
            print(f"tracking={mode!r} needs comet_ml (pip install comet_ml); logging to CSV only", file=sys.stderr)
            return loggers
        loggers.append(CometTracker(resolved, run_dir / "comet", project, workspace, experiment_name, tags))
    return loggers


def find_secret(root: str | Path, secret: str | None = None) -> list[Path]:
    """Files under ``root`` containing ``secret`` (default: the value of ``COMET_API_KEY``), zips included.

    Used after a run to make sure the key was written nowhere; the key itself is never printed.
    """
    import zipfile

    secret = secret if secret is not None else os.environ.get("COMET_API_KEY", "")
    if not secret:
        return []
    needle = secret.encode()
    hits: list[Path] = []
    for p in Path(root).rglob("*"):
        if not p.is_file():
            continue
        try:
            data = p.read_bytes()
        except OSError:
            continue
        found = needle in data
        if not found and p.suffix == ".zip":
            try:
                with zipfile.ZipFile(p) as z:
                    found = any(needle in z.read(n) for n in z.namelist())
            except zipfile.BadZipFile:
                pass
        if found:
            hits.append(p)
    return hits


__all__ = ["MODES", "CometTracker", "make_loggers", "resolve_mode", "comet_key_available", "find_secret"]

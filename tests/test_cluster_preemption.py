"""One pre-emption path: under Slurm the training's only stop mechanism is SIGTERM (StopCheckpoint → last.ckpt);
Lightning's own Slurm auto-requeue (a SIGUSR1 handler that writes hpc_ckpt_*.ckpt and runs scontrol requeue)
is off, because the job script (util.cluster.supervise) owns the requeue."""
from __future__ import annotations

import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from util.config import load_config
from util.training.settings import trainer_settings

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


@pytest.fixture
def in_slurm_job(monkeypatch):
    """The variables of a one-task Slurm batch job (what train.sh's papermill kernel sees)."""
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "eqocelot", "SLURM_JOB_ID": "123",
                       "SLURM_NODELIST": "node1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                       "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)


def test_slurm_environment_without_auto_requeue(in_slurm_job):
    settings = trainer_settings(load_config(TINY))
    (env,) = [p for p in settings["plugins"] if isinstance(p, SLURMEnvironment)]
    assert env.auto_requeue is False


def test_trainer_under_slurm_handles_sigterm_only(in_slurm_job):
    settings = trainer_settings(load_config(TINY, ["accelerator=cpu"]))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, **settings)
    assert isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
    old_usr1, old_term = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    connector = trainer._signal_connector
    try:
        connector.register_signal_handlers()
        assert signal.getsignal(signal.SIGUSR1) == old_usr1, "Lightning registered its requeue handler"
        assert signal.getsignal(signal.SIGTERM) != old_term  # the stop flag StopCheckpoint reads
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        assert trainer.received_sigterm
    finally:
        connector.teardown()
        signal.signal(signal.SIGUSR1, old_usr1)
        signal.signal(signal.SIGTERM, old_term)

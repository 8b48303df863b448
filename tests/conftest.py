"""Shared pytest fixtures: a tiny synthetic OCELOT set, the shipped real set and the optional ../shared/data."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real default set shipped in the repository (BSD-3-Clause; see its README).
BRCA_M2C = REPO / "data" / "brca_m2c"
#: Other real data sets in OCELOT layout, where a machine has them, live next to the repository.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_ocelot_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic OCELOT-layout set (4 train / 2 val / 2 test, 128×128 at 0.2 µm/px, with tissue patches).

    Made once per test session in a temporary folder (about a second); treat it as read-only.
    """
    from util.synthetic import make_synthetic_ocelot

    root = tmp_path_factory.mktemp("tiny_ocelot") / "synthetic_ocelot"
    return make_synthetic_ocelot(root, n_train=4, n_val=2, n_test=2, size=128, seed=0)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` next to the repository (real OCELOT-layout sets), or skip when it is absent."""
    if not SHARED_DATA.is_dir() or not any(p.is_dir() for p in SHARED_DATA.iterdir()):
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only on machines that have ../shared/data)")
    return SHARED_DATA


def real_datasets(shared: Path) -> list[Path]:
    """The OCELOT-layout data sets (folders with metadata.json) under ``shared``."""
    return sorted(p for p in shared.iterdir() if (p / "metadata.json").is_file())


@pytest.fixture(scope="session")
def slurm_conf():
    """The real single-node test cluster (``tests/slurm_cluster.sh``): started or reused, ``SLURM_CONF``
    exported; yields the path of its ``slurm.conf`` (see :func:`slurm_helpers.start_test_cluster`)."""
    from slurm_helpers import start_test_cluster

    yield from start_test_cluster()

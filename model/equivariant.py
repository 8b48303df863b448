"""Old module of the moment-kernel layers, now the package :mod:`model.moment`; every name is re-exported here."""
from __future__ import annotations

from .equivariance import GroupElement, act, exact_arithmetic  # noqa: F401
from .groups import MOMENT_GROUPS  # noqa: F401
from .moment import *  # noqa: F401,F403
from .moment import __all__ as _moment_all
from .moment.activations import _NormReLUFn  # noqa: F401
from .moment.norm import _ScalarVectorBatchNormFn as _FieldBatchNormFn  # noqa: F401

__all__ = [*_moment_all, "MOMENT_GROUPS", "exact_arithmetic"]

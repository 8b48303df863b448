"""Old module of the moment U-Net, now :mod:`model.moment.unet`; every name is re-exported here."""
from __future__ import annotations

from .contract import UNetBase, level_channels  # noqa: F401
from .equivariant import *  # noqa: F401,F403
from .moment.unet import __all__  # noqa: F401

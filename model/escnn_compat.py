"""The one place where the project adapts escnn / e2cnn to the environment it runs in.

Imported (and :func:`patch_escnn` applied) by :mod:`model.escnn_backend`, so on import of :mod:`model.escnnUnet`,
before any escnn layer is built.

1. **scikit-learn's ``randomized_svd`` vs escnn 1.0.11.** escnn computes the null spaces behind its kernel bases
   in ``escnn.group._numerical.null``; whenever scikit-learn is importable it calls
   ``sklearn.utils.extmath.randomized_svd`` on an ``np.matrix``, which current scikit-learn rejects
   (``TypeError: np.matrix is not supported``). The toolkit needs scikit-learn, so on a fresh machine every
   escnn convolution fails to build. :func:`patch_escnn` sets ``escnn.group._numerical.randomized_svd = None``,
   so escnn takes its own exact path, ``scipy.linalg.svd(A, full_matrices=False)`` (the matrices are small for
   planar groups: exact and fast). A warm escnn cache hides the failure, so the tests build every supported
   group in a fresh cache (see :func:`set_cache_dir`). e2cnn 0.2.3 does not use scikit-learn: nothing to fix.

2. **Where escnn caches on disk.** escnn memoises some group-theoretic computations (irrep restrictions,
   Clebsch-Gordan coefficients, ...) with ``joblib.Memory`` under ``<escnn install>/group/_cache`` (module
   variable ``escnn.group.__cache_path__``). That folder may be read-only (shared conda env on a cluster) or
   shared by several users. Set the environment variable ``ESCNN_CACHE_DIR`` before importing
   :mod:`model.escnnUnet` (or call :func:`set_cache_dir`) to put the cache elsewhere; ``ESCNN_CACHE_DIR=""``
   (empty) disables the disk cache. The rest of an escnn build (sampling kernel bases) is cached in memory per
   process only. e2cnn has no disk cache.

3. **e2cnn 0.2.3 vs current PyTorch.** When a sampled kernel basis has elements that vanish on the grid (e.g. a
   1×1 kernel, where only angular frequency 0 survives), e2cnn indexes a tensor with a ``uint8`` mask, which
   PyTorch no longer accepts (``masked_fill_ only supports boolean masks``). :func:`patch_e2cnn` recompiles
   ``SingleBlockBasisExpansion.__init__`` with a ``bool`` mask (a two-line textual change, checked to apply).

4. **NumPy < 2.** escnn's compiled dependency ``lie_learn`` ships extensions built against NumPy 1.x; under
   NumPy 2 ``import escnn`` fails. The project pins ``numpy<2`` in ``pyproject.toml`` for this reason.
"""
from __future__ import annotations

import importlib
import os
import sys
import warnings
from types import ModuleType

#: Environment variable naming escnn's disk-cache folder ("" disables the disk cache).
CACHE_ENV = "ESCNN_CACHE_DIR"

#: Backend name -> pip package that provides it.
BACKEND_PACKAGES = {
    "escnn": "escnn (pip install --no-deps escnn==1.0.11; see setup.sh for its other dependencies)",
    "e2cnn": "e2cnn (pip install e2cnn==0.2.3)",
}

_patched = False
_cache_dir: str | None = None


def import_backend(backend: str) -> tuple[ModuleType, ModuleType]:
    """``(gspaces, nn)`` modules of ``backend`` (``"escnn"`` or ``"e2cnn"``), escnn patched by :func:`patch_escnn`.

    Raises ``ValueError`` for an unknown backend and ``ImportError`` naming the package to install when the
    backend is missing.
    """
    if backend not in BACKEND_PACKAGES:
        raise ValueError(f"unknown backend {backend!r}; supported backends: {', '.join(BACKEND_PACKAGES)}")
    try:
        with warnings.catch_warnings():
            # escnn warns at import that py3nj (3-D groups only) is missing; irrelevant for planar groups.
            warnings.filterwarnings("ignore", message=".*py3nj.*")
            gspaces = importlib.import_module(f"{backend}.gspaces")
            enn = importlib.import_module(f"{backend}.nn")
    except ImportError as err:
        raise ImportError(
            f"backend={backend!r} needs the package {BACKEND_PACKAGES[backend]}, which could not be imported "
            f"({err}). Install it, or choose another backend ({', '.join(BACKEND_PACKAGES)})."
        ) from err
    if backend == "escnn":
        patch_escnn()
    else:
        patch_e2cnn()
    return gspaces, enn


_e2cnn_patched = False


def patch_e2cnn() -> None:
    """Make e2cnn's basis sampling use ``bool`` masks (PyTorch rejects its ``uint8`` masks). Idempotent."""
    global _e2cnn_patched
    if _e2cnn_patched:
        return
    import inspect  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    from e2cnn.nn.modules.r2_conv import basisexpansion_singleblock as module  # noqa: PLC0415

    cls = module.SingleBlockBasisExpansion
    source = textwrap.dedent(inspect.getsource(cls.__init__))
    fixes = (("mask = mask.astype(np.uint8)", "mask = mask.astype(bool)"),
             ("full_mask[mask] = norms.to(torch.uint8)", "full_mask[mask] = norms"))
    for old, new in fixes:
        if old not in source:
            raise RuntimeError(f"patch_e2cnn: {old!r} not found in e2cnn's SingleBlockBasisExpansion.__init__; "
                               "this e2cnn version is not the tested 0.2.3, check whether the fix is still needed")
        source = source.replace(old, new)
    namespace: dict = {}
    exec(compile(source, inspect.getsourcefile(cls), "exec"), module.__dict__, namespace)  # noqa: S102
    cls.__init__ = namespace["__init__"]
    _e2cnn_patched = True


def patch_escnn() -> None:
    """Make escnn use its exact SciPy SVD (not scikit-learn's ``randomized_svd``); apply ``ESCNN_CACHE_DIR``.

    Idempotent. Called on import of :mod:`model.escnn_backend` (when escnn is installed) and by
    :func:`import_backend`.
    """
    global _patched
    if _patched:
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*py3nj.*")
        import escnn.group._numerical as numerical  # noqa: PLC0415
    # escnn: `if randomized_svd is not None: randomized_svd(A, ...)  else: linalg.svd(A, full_matrices=False)`
    numerical.randomized_svd = None
    _patched = True
    if CACHE_ENV in os.environ:
        set_cache_dir(os.environ[CACHE_ENV] or None)


def default_cache_dir() -> str:
    """escnn's own cache folder, ``<escnn install>/group/_cache``."""
    import escnn.group  # noqa: PLC0415

    return os.path.join(os.path.dirname(escnn.group.__file__), "_cache")


def cache_dir() -> str | None:
    """The folder escnn's disk cache currently writes to (``None`` when disabled)."""
    if _cache_dir is not None:
        return _cache_dir or None
    return default_cache_dir()


#: (module name, attribute) -> the undecorated function, for every joblib-cached escnn function found.
_cached_functions: dict[tuple[str, str], object] = {}


def set_cache_dir(path: str | None) -> None:
    """Point escnn's joblib disk cache at ``path`` (created if needed); ``None`` or ``""`` disables it.

    escnn wraps a few module-level functions with ``joblib.Memory(__cache_path__).cache`` at import time; this
    re-wraps each of them (found in the loaded ``escnn.*`` modules) with a ``Memory`` at ``path``, or unwraps them.
    The callers look these functions up as module globals at call time, so the change takes effect at once.
    """
    global _cache_dir
    from joblib import Memory  # noqa: PLC0415
    from joblib.memory import MemorizedFunc, NotMemorizedFunc  # noqa: PLC0415

    import escnn.group  # noqa: PLC0415  (imports every group module, so all wrapped functions exist)

    for name, module in list(sys.modules.items()):
        if not name.startswith("escnn") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, (MemorizedFunc, NotMemorizedFunc)) and (name, attr) not in _cached_functions:
                _cached_functions[(name, attr)] = value.func
    memory = None
    if path:
        os.makedirs(path, exist_ok=True)
        memory = Memory(path, verbose=0)
    for (name, attr), func in _cached_functions.items():
        setattr(sys.modules[name], attr, memory.cache(func) if memory is not None else func)
    escnn.group.__cache_path__ = path or ""
    _cache_dir = path or ""


__all__ = ["CACHE_ENV", "BACKEND_PACKAGES", "import_backend", "patch_escnn", "patch_e2cnn",
           "cache_dir", "default_cache_dir", "set_cache_dir"]

"""What every converter shares: :class:`ConversionError` and the output folder, whose files are recorded in a
manifest so that ``--force`` later deletes exactly those (other files are never touched)."""
from __future__ import annotations

from pathlib import Path

from util.manifest import ManifestWriter, prepare_out

MANIFEST = ".convert_manifest.json"


class ConversionError(ValueError):
    """The source checkout or the output folder is not usable; the message names the path."""


# ----------------------------------------------------------------------------------------------- output folder
def _prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty ``out`` unless ``force``; with ``force`` delete only the files of an earlier conversion."""
    prepare_out(out, force, manifest=MANIFEST, tool="util.convert", error=ConversionError, keep_foreign=True)


def _Writer(out: Path, converter: str) -> ManifestWriter:
    """Writes files under ``out`` and records them, so ``--force`` can later delete exactly these."""
    return ManifestWriter(out, MANIFEST, {"converter": converter})



__all__ = ["MANIFEST", "ConversionError"]

"""Output folders a tool owns: ``--force`` deletes only what that tool wrote there, never anything else.

A tool that writes a folder knows which files it wrote: from a manifest it writes next to them
(:class:`ManifestWriter`, read back by :func:`read_manifest`) or from its own output (``util.synthetic``
rebuilds the list from its ``metadata.json``). Before replacing the folder, :func:`remove_owned` deletes exactly
those files (paths outside the folder are refused) and returns them, so the tool can say what it removed.
Any other file is *foreign*: by default it is named in the error and nothing at all is deleted; with
``keep_foreign=True`` it stays in place. Folders left empty are removed (they hold nothing).

Used by ``util.convert`` (``.convert_manifest.json``, foreign files kept) and ``util.synthetic`` (foreign files
refused, since the whole folder is replaced by a new one).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

#: How many file names an error or a report names before "... and N more".
MAX_NAMED = 5

ErrorFactory = Callable[[str], Exception]


def describe(files: list[str], max_named: int = MAX_NAMED) -> str:
    """``"a, b, c (and 4 more)"``: the first ``max_named`` names of ``files``."""
    shown = ", ".join(files[:max_named])
    return shown + (f" (and {len(files) - max_named} more)" if len(files) > max_named else "")


def list_files(folder: Path) -> list[str]:
    """Relative POSIX paths of every file under ``folder`` (symlinks count as files, never followed), sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        d = Path(dirpath)
        links = [n for n in dirnames if (d / n).is_symlink()]
        for name in filenames + links:
            out.append((d / name).relative_to(folder).as_posix())
    return sorted(out)


def _normalise(folder: Path, owned: Iterable[str], error: ErrorFactory, source: str) -> set[str]:
    root = Path(os.path.abspath(folder))
    out: set[str] = set()
    for rel in owned:
        p = Path(os.path.normpath(root / str(rel)))
        if root not in p.parents:
            raise error(f"{source}: entry {rel!r} points outside {folder}; nothing was deleted, remove the folder "
                        f"yourself")
        out.add(p.relative_to(root).as_posix())
    return out


def plan_removal(folder: Path, owned: Iterable[str], *, tool: str, error: ErrorFactory = FileExistsError,
                 keep_foreign: bool = False, source: str | None = None) -> list[str]:
    """The files of ``owned`` (relative paths) present in ``folder``, sorted; deletes nothing.

    Raises ``error`` naming the foreign files (up to :data:`MAX_NAMED`) when ``folder`` holds files that are not
    in ``owned`` (unless ``keep_foreign``), or when an entry points outside ``folder``.
    """
    folder = Path(folder)
    mine = _normalise(folder, owned, error, source or str(folder))
    present = list_files(folder)
    foreign = [f for f in present if f not in mine]
    if foreign and not keep_foreign:
        raise error(f"{folder}: refusing to replace it: {len(foreign)} file(s) there were not written by {tool}: "
                    f"{describe(foreign)}. Nothing was deleted; move them away or choose another folder")
    return [f for f in present if f in mine]


def remove_owned(folder: Path, owned: Iterable[str], *, tool: str, error: ErrorFactory = FileExistsError,
                 keep_foreign: bool = False, source: str | None = None) -> list[str]:
    """Delete the files of ``owned`` in ``folder`` and the folders left empty; return the deleted files.

    Checks first (:func:`plan_removal`), so a refusal deletes nothing.
    """
    folder = Path(folder)
    files = plan_removal(folder, owned, tool=tool, error=error, keep_foreign=keep_foreign, source=source)
    for rel in files:
        (folder / rel).unlink()
    dirs = {p for rel in files for p in (folder / rel).parents if folder in p.parents}
    if not keep_foreign:  # the folder is being replaced: no empty folder may stay
        dirs |= {Path(d) for d, _, _ in os.walk(folder) if Path(d) != folder}
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if d.is_dir() and not d.is_symlink() and not any(d.iterdir()):
            d.rmdir()
    return files


def read_manifest(folder: Path, name: str, error: ErrorFactory = ValueError) -> list[str] | None:
    """The ``files`` list of the manifest ``folder/name``, or None when there is none; ``error`` if unreadable."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            raise TypeError("'files' is not a list of paths")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise error(f"{path}: unreadable manifest ({e}); remove the folder yourself") from None
    return files


def prepare_out(out: Path, force: bool, *, manifest: str, tool: str, error: ErrorFactory = FileExistsError,
                keep_foreign: bool = False) -> list[str]:
    """Make ``out`` ready for a tool that records its files in ``out/manifest``; return the files deleted.

    An absent or empty ``out`` is fine. A non-empty one needs ``force`` and a manifest; then exactly the files
    listed there (and the manifest) are deleted (see :func:`remove_owned`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    if not force:
        raise error(f"{out}: exists and is not empty (pass --force to replace what {tool} wrote there earlier)")
    files = read_manifest(out, manifest, error)
    if files is None:
        raise error(f"{out}: not empty and has no {manifest}, so its files were not written by {tool}; remove "
                    f"them yourself or choose another folder")
    return remove_owned(out, [*files, manifest], tool=tool, error=error, keep_foreign=keep_foreign,
                        source=str(out / manifest))


class ManifestWriter:
    """Writes files under ``out`` and records them; :meth:`close` writes the manifest ``out/name``.

    ``info`` (e.g. ``{"converter": "brca_m2c"}``) is stored next to the ``files`` list.
    """

    def __init__(self, out: Path, name: str, info: dict[str, Any] | None = None) -> None:
        self.out, self.name, self.info = Path(out), name, dict(info or {})
        self.files: list[str] = []

    def path(self, rel: str) -> Path:
        """``out/rel`` (its folder created), recorded as written."""
        p = self.out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        self.files.append(rel)
        return p

    def close(self) -> None:
        text = json.dumps({**self.info, "files": self.files}, indent=1)
        (self.out / self.name).write_text(text + "\n", encoding="utf-8")


__all__ = ["MAX_NAMED", "describe", "list_files", "plan_removal", "remove_owned", "read_manifest", "prepare_out",
           "ManifestWriter"]

"""Early checks of output paths, so that a run or an evaluation fails before its work, not after."""
from __future__ import annotations

from pathlib import Path

from .config import ConfigError


def _check_parents(p: Path, what: str) -> None:
    """The nearest existing folder above ``p`` must be a folder (``mkdir -p`` could not pass a file)."""
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{what} {p} cannot be created: {parent} is a file, not a folder")
            return


def check_output_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Raise ``ConfigError`` when ``folder`` cannot be a folder: it, or the nearest existing path
    above it, is an existing file. (Permissions are left to the write itself.)"""
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{what} {p} is an existing file, not a folder")
    _check_parents(p, what)
    return p


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """Raise ``ConfigError`` when ``path`` is a folder or its folder cannot be created."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {p} is a folder; give a file name")
    _check_parents(p, what)
    return p

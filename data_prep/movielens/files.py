"""Locating a MovieLens copy: which format ``--src`` holds (ml-100k, ml-1m, RecBole atomic files, in a
folder or a zip) and reading its three files as bytes, with clear errors for missing or ambiguous input."""

from __future__ import annotations

import posixpath
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from torchrec_mdr.data.errors import DataError

Kind = Literal["ml-100k", "ml-1m", "recbole"]
_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "ml-100k": ("u.data", "u.user", "u.item"),
    "ml-1m": ("ratings.dat", "users.dat", "movies.dat"),
}


@dataclass
class SourceFiles:
    """The three files of one MovieLens copy, in a folder or inside a zip archive."""

    kind: Kind
    src: Path
    folder: str  # folder inside the zip ("" for the top), or the folder on disk
    names: tuple[str, str, str]  # ratings, users, items
    zipped: bool

    def path(self, index: int) -> str:
        if self.zipped:
            return posixpath.join(self.folder, self.names[index])
        return str(Path(self.folder) / self.names[index])

    def label(self, index: int) -> str:
        """How error messages name the file: ``archive.zip!member`` inside a zip."""
        return f"{self.src}!{self.path(index)}" if self.zipped else self.path(index)

    def read(self, index: int) -> bytes:
        try:
            if self.zipped:
                with zipfile.ZipFile(self.src) as archive:
                    return archive.read(self.path(index))
            return Path(self.path(index)).read_bytes()
        except (KeyError, FileNotFoundError):
            raise DataError(
                f"file not found ({self.kind} needs {', '.join(self.names)})", file=self.label(index)
            ) from None
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read: {error}", file=self.label(index)) from None


def locate(src: Path) -> SourceFiles:
    """Detect the format of ``src`` and name its ratings, users and items files.

    A folder is searched at its top level only; a zip at every level, and must hold exactly one
    dataset. ml-100k wins over ml-1m over RecBole when a folder holds several layouts.
    """
    src = Path(src)
    if not src.exists():
        raise DataError("does not exist", file=src)
    if src.is_file() and src.suffix == ".inter":
        return _recbole_files(src, str(src.parent), src.stem, zipped=False)
    if src.is_dir():
        folders = {str(src): {p.name for p in src.iterdir() if p.is_file()}}
        zipped = False
    elif src.is_file() and zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as archive:
                members = [m for m in archive.namelist() if not m.endswith("/")]
        except (OSError, zipfile.BadZipFile) as error:
            raise DataError(f"cannot read the archive: {error}", file=src) from None
        folders = {}
        for member in members:
            folders.setdefault(posixpath.dirname(member), set()).add(posixpath.basename(member))
        zipped = True
    else:
        raise DataError("not a folder, a zip archive (.zip, .whl) or a RecBole .inter file", file=src)
    found: list[SourceFiles] = []
    for folder, names in sorted(folders.items()):
        for kind, layout in _LAYOUTS.items():
            if layout[0] in names:
                found.append(SourceFiles(kind, src, folder, layout, zipped))  # type: ignore[arg-type]
                break
        else:
            found += [
                _recbole_files(src, folder, name[: -len(".inter")], zipped)
                for name in sorted(names)
                if name.endswith(".inter")
            ]
    if not found:
        raise DataError(
            "no MovieLens data: expected u.data (ml-100k), ratings.dat (ml-1m) or a RecBole "
            "<name>.inter with <name>.user and <name>.item",
            file=src,
        )
    if len(found) > 1:
        listed = ", ".join(f.label(0) for f in found)
        raise DataError(f"holds several datasets ({listed}); point --src at one of them", file=src)
    return found[0]


def _recbole_files(src: Path, folder: str, name: str, zipped: bool) -> SourceFiles:
    return SourceFiles("recbole", src, folder, (f"{name}.inter", f"{name}.user", f"{name}.item"), zipped)

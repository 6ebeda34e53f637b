"""Which files an ingest reads: paths, directories (recursively) and globs, made safe.

Each file gets a *source*, the name it is stored and cited under: the name of the directory
given (for a glob, of its fixed leading directory; for a file, of its parent) followed by the
file's path inside it, e.g. ``docs/guide/install.md`` for ``chatwright ingest ~/proj/docs``.
So the same file gets the same source whether ingested alone, by glob or with its directory,
from any working directory, and two directories ingested into one collection do not collide.

Left out, each with a :class:`Skipped` and its reason: arguments with a ``..`` component,
paths that do not exist, symbolic links (to files or directories) that lead outside the
directory given, things that are not regular files (a FIFO would block a read), and a second
file with a source already taken. Hidden files and directories (``.git``) and files of a type
we do not read are passed over silently when found by walking or globbing (counted in
``ignored``); named explicitly, an unsupported file is a :class:`Skipped`.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from chatwright.ingest.loaders import Skipped, format_of

__all__ = ["Found", "SourceFile", "find_files"]


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: Path  # as found (for messages)
    real: Path  # resolved: what is read
    source: str  # the stored name (see the module's docstring)


@dataclass(frozen=True, slots=True)
class Scope:
    """Sources an argument covers, for ``--sync``: under ``prefix``, matching ``pattern``."""

    prefix: str
    pattern: re.Pattern[str] | None = None

    def covers(self, source: str) -> bool:
        if not source.startswith(self.prefix):
            return False
        return self.pattern is None or bool(self.pattern.fullmatch(source[len(self.prefix) :]))


@dataclass(slots=True)
class Found:
    files: list[SourceFile] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)
    ignored: int = 0

    def covered(self, source: str) -> bool:
        return any(scope.covers(source) for scope in self.scopes)


def find_files(paths: Iterable[str | Path], *, literal: bool = False) -> Found:
    """The files named by ``paths`` (files, directories, globs), in a stable order.
    ``literal``: names are never globs (uploaded files may be called ``report [final].md``)."""
    finder = _Finder(literal)
    for arg in paths:
        finder.argument(str(arg))
    return finder.found


def _prefix(root: Path) -> str:
    return f"{root.name}/" if root.name else ""


def _has_dotdot(path: str) -> bool:
    return ".." in Path(path).parts


def _without_dotdot(arg: str) -> str | None:
    """``arg`` (``../docs``, ``../notes/*.md``) with its part up to the last ``..`` resolved
    on the file system, as the shell user meant it; None where a glob comes before a ``..``
    (``docs/*/../x``: nothing to resolve it against)."""
    parts = Path(arg).expanduser().parts
    last = max(i for i, part in enumerate(parts) if part == "..")
    if any(glob.has_magic(part) for part in parts[:last]):
        return None
    return str(Path(*parts[: last + 1]).resolve().joinpath(*parts[last + 1 :]))


class _Finder:
    def __init__(self, literal: bool = False) -> None:
        self.literal = literal
        self.found = Found()
        self.by_source: dict[str, SourceFile] = {}
        self.by_real: dict[Path, SourceFile] = {}

    def skip(self, path: Path | str, reason: str) -> None:
        self.found.skipped.append(Skipped(str(path), reason))

    def argument(self, arg: str) -> None:
        if _has_dotdot(arg):
            resolved = None if self.literal else _without_dotdot(arg)
            if resolved is None:
                self.skip(arg, "the path has a '..' component; give the directory itself instead")
                return
            arg = resolved
        if not self.literal and glob.has_magic(arg):
            self.glob(arg)
            return
        path = Path(arg).expanduser()
        if path.is_dir():
            root = path.resolve()
            self.found.scopes.append(Scope(_prefix(root)))
            self.walk(path, path, root)
        elif path.exists() or path.is_symlink():
            if format_of(path) is None:
                self.skip(path, f"unsupported file type {path.suffix or '(no suffix)'!r}")
                return
            root = path.absolute().parent.resolve()
            self.add(path, _prefix(root) + path.name, root, explicit=True)
        else:
            self.skip(path, "no such file or directory")

    def glob(self, pattern: str) -> None:
        parts = Path(pattern).expanduser().parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        base = Path(*parts[:fixed]) if fixed else Path(".")
        if not base.is_dir():
            self.skip(pattern, f"no such directory {str(base)!r}")
            return
        root = base.resolve()
        rest = "/".join(parts[fixed:])
        self.found.scopes.append(Scope(_prefix(root), _glob_regex(rest)))
        matches = sorted(glob.glob(str(Path(*parts)), recursive=True))
        if not matches:
            self.skip(pattern, "no files match")
        for match in matches:
            path = Path(match)
            if path.is_dir() and not path.is_symlink():
                self.walk(path, base, root)
            elif format_of(path) is not None:
                self.add(path, _prefix(root) + path.relative_to(base).as_posix(), root)
            else:
                self.found.ignored += 1

    def walk(self, top: Path, base: Path, root: Path) -> None:
        """Every readable file under ``top``; sources relative to ``base`` (whose real path
        is ``root``)."""
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if self.enter(here / d, root))
            for name in sorted(filenames):
                path = here / name
                if name.startswith(".") or format_of(path) is None:
                    self.found.ignored += 1
                    continue
                self.add(path, _prefix(root) + path.relative_to(base).as_posix(), root)

    def enter(self, path: Path, root: Path) -> bool:
        if path.name.startswith("."):
            return False
        if path.is_symlink():  # never followed: inside the root its target is walked anyway
            if not _inside(path.resolve(), root):
                self.skip(path, f"symbolic link leads outside {root}")
            return False
        return True

    def add(self, path: Path, source: str, root: Path, *, explicit: bool = False) -> None:
        real = path.resolve()
        if path.is_symlink() and not explicit and not _inside(real, root):
            self.skip(path, f"symbolic link leads outside {root}")
            return
        try:
            mode = real.stat().st_mode
        except OSError:
            self.skip(path, "broken symbolic link" if path.is_symlink() else "cannot stat")
            return
        if not stat.S_ISREG(mode):
            self.skip(path, "not a regular file")
            return
        if _has_dotdot(source) or PurePosixPath(source).is_absolute():
            self.skip(path, f"unsafe name {source!r}")
            return
        if real in self.by_real:
            if self.by_real[real].source != source:
                self.skip(path, f"same file as {self.by_real[real].path}")
            return
        if source in self.by_source:
            taken = self.by_source[source].path
            self.skip(path, f"its name {source!r} is taken by {taken}")
            return
        found = SourceFile(path, real, source)
        self.by_source[source] = self.by_real[real] = found
        self.found.files.append(found)


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for the paths ``glob(pattern, recursive=True)`` matches (``/``-separated)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[^" + body[1:] + "]" if body.startswith("!") else "[" + body + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    # a matched directory is ingested whole: what is under it is covered too
    return re.compile("".join(out) + "(?:/.*)?")

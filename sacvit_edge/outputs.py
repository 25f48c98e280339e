"""Output paths other than export directories (those are atomic.py's): checked before the work
that fills them, so a bad path costs nothing and never replaces a user's file. Torch-free."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import OutputError

MAX_JSON_BYTES = 64 * 2**20  # a report beyond this is not one of ours


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def probe_folder(folder: Path, what: str) -> None:
    """Whether files can be written into `folder` (or, when it does not exist yet, created there),
    creating nothing that stays: a probe file is made in the nearest folder that exists (root
    ignores permission bits, so os.access() is not enough), and the missing part of the path must
    not run through a file."""
    try:
        existing = folder
        while not existing.exists():
            if existing.parent == existing:
                break
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"{what}: cannot write into {folder} ({existing} is not a directory)")
        fd, probe = tempfile.mkstemp(prefix=".sacvit-edge-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
        if existing != folder:  # a name too long is only found by the file system: ask it
            os.stat(folder)
    except FileNotFoundError:
        return
    except OutputError:
        raise
    except OSError as exc:  # read-only, a name too long, no permission
        raise OutputError(f"{what}: cannot write into {folder} ({_reason(exc)})") from exc


def check_output_dir(path: Path, option: str) -> Path:
    """A folder files will be written into (write_into creates it): it must be a directory, or
    creatable, and writable. Nothing is created here."""
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"{option} {path}: exists and is not a directory")
    except OSError as exc:
        raise OutputError(f"{option} {path}: not usable ({_reason(exc)})") from exc
    probe_folder(path, option)
    return path


def write_into(directory: Path, name: str, write, option: str) -> Path:
    """Call write(path) for directory/name, a failure being the project's error naming the path."""
    path = directory / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as exc:
        raise OutputError(f"{option}: cannot write {path} ({_reason(exc)})") from exc
    return path


def check_report_file(path: Path, option: str) -> Path:
    """A JSON report to be written at the end: its folder must be writable, and an existing file
    is replaced only when it is empty or JSON (a report), never another kind of file."""
    try:
        if path.is_dir():
            raise OutputError(f"{option} {path}: is a directory; give a file name")
        if path.exists():
            if path.stat().st_size > MAX_JSON_BYTES:
                raise OutputError(f"{option} {path}: exists and is not a JSON report; choose another path")
            text = path.read_text(errors="replace")
            if text.strip():
                try:
                    json.loads(text)
                except ValueError:
                    raise OutputError(f"{option} {path}: exists and is not a JSON report (sacvit-edge replaces only "
                                      "JSON files); choose another path") from None
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{option} {path}: not usable ({_reason(exc)})") from exc
    probe_folder(path.parent, f"{option} {path}")
    return path


def write_report(path: Path, text: str, option: str) -> None:
    """Write a checked report atomically (a scratch file renamed over it)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        raise OutputError(f"{option} {path}: cannot write ({_reason(exc)})") from exc

"""Atomic publication of a directory (exports, calibrated copies): assembled in a temporary
sibling and swapped into place in one step, so readers never see a half-written directory.
Torch-free: calibration of an export directory runs on the deployment install."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ExportError

log = logging.getLogger(__name__)


def staging_dir(out_dir: Path) -> Path:
    """A fresh temporary sibling of out_dir (named after this process, so leftovers of a killed
    writer are recognised and removed by the next one)."""
    remove_leftovers(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix(out_dir)}{os.getpid()}-", dir=out_dir.parent))
    except OSError as exc:
        raise ExportError(f"{out_dir.parent}: cannot write there ({exc.strerror or exc})") from exc
    tmp.chmod(0o755)  # mkdtemp makes it private; an export directory is meant to be shared and copied
    return tmp


def tmp_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}.tmp-"


def remove_leftovers(out_dir: Path) -> None:
    """Delete temporary siblings that killed exports left behind (their process is gone)."""
    for path in out_dir.parent.glob(f"{tmp_prefix(out_dir)}*"):
        pid = path.name[len(tmp_prefix(out_dir)):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by an interrupted export", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def move_into_place(tmp: Path, out_dir: Path) -> None:
    """Publish tmp as out_dir. An existing export is swapped out in one atomic step (Linux
    renameat2 RENAME_EXCHANGE), so a reader or a killed exporter never sees no export there."""
    try:
        if not out_dir.exists():
            try:
                tmp.rename(out_dir)
                return
            except OSError:
                if not out_dir.is_dir():  # not "someone else published first"
                    raise
        if _exchange(tmp, out_dir):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous export
            return
        old = out_dir.with_name(f"{tmp_prefix(out_dir)}{os.getpid()}-old")  # portable fallback: two renames
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise ExportError(f"{out_dir}: cannot move the finished export into place ({exc.strerror or exc})") from exc


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux >= 3.15, glibc >= 2.28). False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # filesystem or kernel without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_export(tmp: Path, dst: Path, manifest: dict) -> None:
    """Finish a staged export directory: write its manifest, check that what was written is what
    loads (every hash and field), and swap it into place at dst."""
    from .manifest import MANIFEST, read_manifest

    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    read_manifest(tmp)
    move_into_place(tmp, dst)


def writable_dir(directory: Path, what: str) -> None:
    """Raise ExportError (not an OSError later) when files cannot be added to `directory`."""
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ExportError(f"{directory}: read-only, cannot add {what} there; copy the export directory somewhere "
                          "writable (or build the engines where it is made, with `sacvit-edge build-engine`)")


def scratch_file(directory: Path, name: str) -> Path:
    """A temporary path in `directory` unique to this process and call: concurrent builders of the
    same file never write into each other's temporary file (the last rename wins, whole)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}-", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(tmp)


def add_derived_files(directory: Path, files: dict[str, Path], update) -> None:
    """Move finished files (scratch_file paths) into an export directory and record them in its
    manifest: hashes into `files`, and `update(derived: dict)` edits the `derived` section.

    In place and safe for concurrent writers and readers: the files are renamed into place whole,
    and the manifest is re-read, edited and atomically replaced under an exclusive lock, so two
    builders adding different engines both end up listed. The content digest is unaffected
    (`derived` and `files` are outside it).
    """
    from .manifest import DERIVED, MANIFEST, sha256_file

    writable_dir(directory, "derived files")
    with open(directory / ".manifest.lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - Windows
            pass
        raw = json.loads((directory / MANIFEST).read_text())
        for name, tmp in files.items():
            digest = sha256_file(tmp)
            os.replace(tmp, directory / name)
            raw["files"][name] = digest
        derived = raw.setdefault(DERIVED, {})
        update(derived)
        out = scratch_file(directory, MANIFEST)
        out.write_text(json.dumps(raw, indent=2))
        os.chmod(out, 0o644)
        os.replace(out, directory / MANIFEST)

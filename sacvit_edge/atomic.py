"""Safe publication of export directories (exports, calibrated copies, the cache).

Three rules, each here once, so that no command can lose a user's files:

- **Only our own directories are replaced.** `check_replaceable` lets an output path be
  replaced only when it is absent, empty, or an export directory this project wrote (its
  manifest validates); with ``force`` also a damaged export whose every entry is a file name
  this project writes. The root, the home directory, the working directory, the system's
  temporary directory, any of their parents and any parent of the source are never replaced.
  Files a user put inside an export directory are carried into its replacement, and the
  replaced directory's mode is kept.
- **Atomic swaps.** A directory is assembled in a temporary sibling and swapped into place in
  one step (Linux renameat2 RENAME_EXCHANGE), so readers never see a half-written directory.
- **One writer at a time.** `DirectoryLock` serialises every process that writes one export
  directory (export, calibrate, derived files, the cache): the second waits for the first and
  then reads what the first wrote, never a silent lost update.

Temporaries carry their writer's pid and a marker file; the next writer to the same place
removes those whose process is gone (`remove_leftovers`). Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import ExportError
from .manifest import DERIVED, MANIFEST, read_manifest, sha256_file

log = logging.getLogger(__name__)

MARKER = ".sacvit-edge-temporary"   # inside every temporary directory this module makes
LOCK_FILE = ".manifest.lock"         # in-place edits of a manifest (derived files), inside the export
TEMP_KINDS = ("tmp", "int8")         # staged exports, int8 work directories
# names this project writes inside an export directory (graphs, engines, its files, scratch files)
_OWNED = re.compile(r"^(manifest\.json|calibration\.json|calibration\.png|model\.pt|[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*"
                    r"\.(onnx|engine)|\.manifest\.lock|" + re.escape(MARKER) + r"|\..+\.\d+-[^/]*\.tmp)$")
_SCRATCH = re.compile(r"^\..+\.(\d+)-[^/]*\.tmp$")


# ---- what may be replaced ------------------------------------------------------------------
def _protected() -> list[tuple[Path, str]]:
    places = [(Path("/"), "the root directory"), (Path.home(), "your home directory"),
              (Path.cwd(), "the working directory"), (Path(tempfile.gettempdir()), "the system's temporary directory")]
    out = []
    for place, what in places:
        with contextlib.suppress(OSError, RuntimeError):
            out.append((place.resolve(), what))
    return out


def _is_export(directory: Path) -> bool:
    try:
        read_manifest(directory)
    except ExportError:
        return False
    return True


def check_replaceable(out: Path, *, sources: Sequence[Path] = (), force: bool = False, option: str = "--out",
                      in_place: bool = False, recognise: Callable[[Path], bool] | None = None,
                      kind: str = "an export directory") -> None:
    """Refuse (ExportError naming `out`) an output path whose replacement could delete what this
    project did not write. Call before any work, and again under the lock before publishing.

    Args:
        out: the directory to be written (replaced if it exists).
        sources: the inputs (checkpoint, export directory); `out` may not be a parent of one,
            nor one of them unless `in_place`.
        force: also replace a directory that is not a valid export but holds nothing but
            files this project writes (a damaged or half-written export).
        recognise: what this project wrote and may replace (default: a valid export directory;
            a Triton model repository passes its own check), called `kind` in the messages.
    """
    try:
        resolved = out.resolve()
        exists = out.exists() or out.is_symlink()
    except (OSError, RuntimeError) as exc:
        raise ExportError(f"{out}: not usable as {option} ({getattr(exc, 'strerror', None) or exc})") from exc
    for place, what in _protected():
        if resolved == place or resolved in place.parents:
            name = what if resolved == place else f"a parent of {what}"
            raise ExportError(f"{out} is {name}; {option} must be a new directory or {kind} sacvit-edge wrote")
    for src in sources:
        with contextlib.suppress(OSError, RuntimeError):
            s = src.resolve()
            if resolved in s.parents:
                raise ExportError(f"{out} holds the source {src}; writing there would delete it. Choose another {option}")
            if resolved == s and not in_place:
                raise ExportError(f"{out} is the source itself; choose another {option}")
    if not exists:
        return
    if out.is_symlink():
        raise ExportError(f"{out} is a symbolic link; give the directory itself as {option}")
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory; choose another {option}")
    if (recognise or _is_export)(out):
        return
    try:
        entries = sorted(p.name for p in out.iterdir())
    except OSError as exc:
        raise ExportError(f"{out}: cannot be read ({exc.strerror or exc})") from exc
    if not entries:
        return
    foreign = [e for e in entries if not (_OWNED.match(e) and (out / e).is_file() and not (out / e).is_symlink())]
    if force and not foreign:
        return
    shown = ", ".join(repr(e) for e in (foreign or entries)[:3]) + (" ..." if len(foreign or entries) > 3 else "")
    if foreign:
        hint = (f"choose a new {option} path, or move those files away yourself" if force else
                f"choose a new {option} path; sacvit-edge replaces only {kind.split(' ', 1)[1]}s it wrote")
        raise ExportError(f"{out} exists and is not {kind}: it holds {len(foreign)} file(s) sacvit-edge did "
                          f"not write ({shown}); {hint}")
    raise ExportError(f"{out} exists and is not a valid export directory (damaged or half-written; files {shown}); "
                      "pass --force (force=True) to replace it, or choose a new path")


# ---- one writer at a time --------------------------------------------------------------------
class DirectoryLock:
    """An exclusive lock on writing one directory, held on the hidden file `.NAME.lock` beside
    it (removed on release). A second writer waits, after saying whom it waits for; a process
    that dies releases its lock. Not re-entrant: take it once per write."""

    def __init__(self, directory: Path, on_wait: Callable[[str], None] | None = None) -> None:
        self.directory = Path(directory)
        self.path = self.directory.parent / f".{self.directory.name}.lock"
        self.on_wait = on_wait  # told too (a progress line); the log always says it
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> None:
        import fcntl

        deadline = None if timeout is None else time.monotonic() + timeout
        said = False
        while True:
            try:
                self.directory.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ExportError(f"{self.directory.parent}: cannot write there ({exc.strerror or exc})") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                if deadline is not None and time.monotonic() >= deadline:
                    os.close(fd)
                    raise ExportError(f"{self.directory}: another process (pid {holder}) is writing it; try again when "
                                      "it has finished") from None
                if not said:
                    message = f"waiting for process {holder}, which is writing {self.directory}"
                    log.warning("%s", message)
                    if self.on_wait is not None:
                        self.on_wait(message)
                    said = True
                os.close(fd)
                time.sleep(0.05)
                continue
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---- temporaries -----------------------------------------------------------------------------
def tmp_prefix(out_dir: Path, kind: str = "tmp") -> str:
    return f".{out_dir.name}.{kind}-"


def temporary_dir(out_dir: Path, kind: str = "tmp") -> Path:
    """A fresh temporary sibling of out_dir, named after this process and marked as ours, so the
    next writer recognises and removes it if this process is killed."""
    remove_leftovers(out_dir)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{tmp_prefix(out_dir, kind)}{os.getpid()}-", dir=out_dir.parent))
        (tmp / MARKER).write_text(str(os.getpid()))
    except OSError as exc:
        raise ExportError(f"{out_dir.parent}: cannot write there ({exc.strerror or exc})") from exc
    tmp.chmod(0o755)  # mkdtemp makes it private; an export directory is meant to be shared and copied
    return tmp


def staging_dir(out_dir: Path) -> Path:
    """Where an export directory is assembled before `move_into_place`."""
    return temporary_dir(out_dir, "tmp")


@contextlib.contextmanager
def work_dir(out_dir: Path, kind: str) -> Iterator[Path]:
    """A temporary sibling of out_dir for intermediate files (int8 quantisation), removed after."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = temporary_dir(out_dir, kind)
    try:
        yield path
    finally:
        remove_temporary(path)


def remove_temporary(path: Path) -> None:
    """Delete a temporary directory this module made (and only such a directory)."""
    if (path / MARKER).is_file() or not path.exists():
        shutil.rmtree(path, ignore_errors=True)
    else:
        log.warning("%s: left in place, it is not a sacvit-edge temporary directory", path)


def _dead(pid_text: str) -> bool:
    return pid_text.isdigit() and not _alive(int(pid_text))


def remove_leftovers(out_dir: Path) -> None:
    """Delete temporary siblings of out_dir that killed writers left behind: those of every kind,
    whose process is gone, and that carry this module's marker."""
    for kind in TEMP_KINDS:
        prefix = tmp_prefix(out_dir, kind)
        for path in out_dir.parent.glob(f"{glob_escape(prefix)}*"):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if not path.is_dir() or path.is_symlink() or not _dead(pid):
                continue
            if (path / MARKER).is_file():
                log.info("removing %s, left by an interrupted run", path)
                shutil.rmtree(path, ignore_errors=True)
            else:  # killed between creating it and marking it: only an empty one is removed
                with contextlib.suppress(OSError):
                    path.rmdir()
    if out_dir.is_dir() and not out_dir.is_symlink():
        remove_stale_scratch(out_dir)


def remove_stale_scratch(directory: Path) -> None:
    """Delete scratch files (`scratch_file`) in an export directory whose process is gone."""
    with contextlib.suppress(OSError):
        for path in directory.iterdir():
            m = _SCRATCH.match(path.name)
            if m and path.is_file() and not path.is_symlink() and _dead(m.group(1)):
                log.info("removing %s, left by an interrupted run", path)
                with contextlib.suppress(OSError):
                    path.unlink()
        marker = directory / MARKER  # left in a live export by a writer killed before its swap
        if marker.is_file() and _dead(marker.read_text().strip()):
            marker.unlink()


def glob_escape(text: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# ---- publication ------------------------------------------------------------------------------
def _export_files(old: Path) -> set[str]:
    try:
        return set(read_manifest(old, verify_files=False).files)
    except ExportError:
        return set()


def _carry_user_files(old: Path, new: Path, written: Callable[[Path], set[str]] = _export_files) -> None:
    """Move entries of the directory being replaced that this project did not write (`written`
    names those it did: an export's listed files by default) into its replacement (renames
    within one parent: cheap, and nothing of the user's is deleted)."""
    listed = written(old)
    for entry in old.iterdir():
        ours = entry.name in listed or entry.name in (MANIFEST, LOCK_FILE, MARKER, "calibration.png") \
            or bool(_SCRATCH.match(entry.name))
        if not ours and not (new / entry.name).exists():
            log.info("keeping %s in the new export directory (not written by sacvit-edge)", entry)
            entry.rename(new / entry.name)


def move_into_place(tmp: Path, out_dir: Path, written: Callable[[Path], set[str]] = _export_files) -> None:
    """Publish tmp as out_dir. An existing directory (which check_replaceable allowed) is swapped
    out in one atomic step, so a reader or a killed writer never sees no export there; files the
    user put into it move across, and its mode is kept."""
    # tmp keeps its marker until it is published: killed before that, the next writer removes it;
    # killed just after, the marker left in the live export is removed by the next writer too
    try:
        if not out_dir.exists():
            try:
                tmp.rename(out_dir)
                (out_dir / MARKER).unlink(missing_ok=True)
                return
            except OSError:
                if not out_dir.is_dir():  # not "someone else published first"
                    raise
        os.chmod(tmp, stat.S_IMODE(out_dir.stat().st_mode))
        _carry_user_files(out_dir, tmp, written)
        (out_dir / MARKER).write_text(str(os.getpid()))  # the old export is ours to remove once swapped out
        if _exchange(tmp, out_dir):
            (out_dir / MARKER).unlink(missing_ok=True)
            remove_temporary(tmp)  # tmp now holds the previous export
            return
        old = out_dir.with_name(f"{tmp_prefix(out_dir)}{os.getpid()}-old")  # portable fallback: two renames
        out_dir.rename(old)
        tmp.rename(out_dir)
        (out_dir / MARKER).unlink(missing_ok=True)
        remove_temporary(old)
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


def publish_export(tmp: Path, dst: Path, manifest: dict, *, sources: Sequence[Path] = (), force: bool = False,
                   in_place: bool = False) -> None:
    """Finish a staged export directory: write its manifest, check that what was written is what
    loads (every hash and field), re-check that dst may be replaced, and swap it into place."""
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    read_manifest(tmp)
    check_replaceable(dst, sources=sources, force=force, in_place=in_place)
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

    In place, under the directory's writer lock (so a calibration swapping the directory at the
    same time cannot drop the new files), and safe for concurrent readers: the files are renamed
    into place whole and the manifest is re-read, edited and atomically replaced. The content
    digest is unaffected (`derived` and `files` are outside it).
    """
    writable_dir(directory, "derived files")
    with DirectoryLock(directory):
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

"""Start and stop a real Triton Inference Server on a model repository.

The server is the `tritonserver` PyTriton bundles (CPU, Python backend only), or one given by
path (a Triton container's /opt/tritonserver). Two things a user would otherwise hit, handled
here:

- Triton's Python-backend stub embeds libpython and loads the first `libpython3.X.so` the
  dynamic linker finds: on a machine whose Python is not the system's (pyenv, conda, a venv of
  another build), that is the system's, while the standard library on sys.path is this
  interpreter's: a mixed interpreter that fails where the two differ (PyTriton's own models:
  `'_thread.RLock' object has no attribute '_recursion_count'` with Debian's 3.11.2 library
  under pyenv's 3.11.7 modules). The server's environment puts this interpreter's own LIBDIR
  first on LD_LIBRARY_PATH.
- The stub takes its sys.path from the `python3` first on PATH: this interpreter's directory
  goes first, so the models import the sacvit_edge (and NumPy) of this environment.

Nothing here changes the calling process's environment or signal handlers.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sacvit_edge.errors import ConfigError, ServeError
from sacvit_edge.extras import require_extra

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonInstall:
    """Where a tritonserver and its backends are; `stub` is the Python-backend stub for this Python."""

    binary: Path
    backends: Path
    stub: Path | None
    libs: Path | None

    def has_backend(self, name: str) -> bool:
        return (self.backends / name).is_dir()


def find_tritonserver(path: str | Path | None = None) -> TritonInstall:
    """The server to run: `path` (a tritonserver binary in a Triton install whose backends are
    in ../backends, as in Triton's containers), else the one nvidia-pytriton bundles."""
    if path is not None:
        binary = Path(path)
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise ConfigError(f"--tritonserver {binary}: not an executable file")
        backends = binary.resolve().parent.parent / "backends"
        if not backends.is_dir():
            raise ConfigError(f"--tritonserver {binary}: no backends directory beside it ({backends})")
        return TritonInstall(binary, backends, None, None)
    require_extra("serve", "sacvit-edge serve")
    import pytriton

    root = Path(pytriton.__file__).parent
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServeError(f"nvidia-pytriton {_version('nvidia-pytriton')} has no Python-backend stub for Python {version} "
                         f"({stub.parent.parent} has {sorted(p.name for p in stub.parent.parent.iterdir())})")
    return TritonInstall(root / "tritonserver" / "bin" / "tritonserver", root / "tritonserver" / "backends", stub,
                         root.parent / "nvidia_pytriton.libs")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def interpreter_libdir() -> Path:
    """This interpreter's shared libpython's directory (what the Python-backend stub must load)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    if not libdir or not name or not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / name).exists():
        raise ServeError(f"this Python ({sys.executable}) has no shared libpython ({libdir}/{name}), which Triton's "
                         "Python backend embeds; use a Python built with --enable-shared (pyenv: "
                         "PYTHON_CONFIGURE_OPTS=--enable-shared pyenv install)")
    return Path(libdir)


def server_environment(install: TritonInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server process's environment (see the module doc): a copy, this process's is untouched."""
    env = dict(os.environ if base is None else base)
    first = [str(interpreter_libdir())] + ([str(install.libs)] if install.libs else [])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(first + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent)] + [p for p in env.get("PATH", "").split(os.pathsep) if p])
    return env


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n ports free on `host` now (the OS's choice; a test or a benchmark's own servers)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class TritonServer:
    """A tritonserver process on a repository, on the given ports (0.0.0.0 unless `address`).

    start() returns once /v2/health/ready answers 200 (Triton's strict readiness: every model
    loaded), stop() sends SIGTERM (Triton stops taking requests, finishes those in flight, waits
    at most `exit_timeout_s`) and kills what is left after that. Usable as a context manager.

    exit_timeout_s bounds the drain. Triton (since 24.04, server PR #6986) first waits for every
    open HTTP connection to close, and clients keep theirs open between requests (tritonclient
    does): with one idle client connected, SIGTERM takes the whole timeout. The default, 10 s, is
    far longer than any batch of this model takes and keeps a stop well under a container's
    usual 30 s grace period.
    """

    def __init__(self, repository: str | Path, *, http_port: int = 8000, grpc_port: int = 8001, metrics_port: int = 8002,
                 address: str = "0.0.0.0", tritonserver: str | Path | None = None, exit_timeout_s: int = 10,
                 log_verbose: int = 0) -> None:
        for option, port in (("--http-port", http_port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"{option} {port!r}: expected a port number in [1, 65535]")
        if isinstance(exit_timeout_s, bool) or not isinstance(exit_timeout_s, int) or not 0 <= exit_timeout_s <= 3600:
            raise ConfigError(f"--exit-timeout {exit_timeout_s!r}: expected whole seconds in [0, 3600]")
        if len({http_port, grpc_port, metrics_port}) != 3:
            raise ConfigError(f"--http-port, --grpc-port, --metrics-port must differ (got {http_port}, {grpc_port}, "
                              f"{metrics_port})")
        self.repository = Path(repository)
        self.http_port, self.grpc_port, self.metrics_port = http_port, grpc_port, metrics_port
        self.address = address
        self.install = find_tritonserver(tritonserver)
        self.exit_timeout_s = exit_timeout_s
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self.stubs: dict[int, str] = {}  # the model processes once ready, and their shared memory
        self.workdir: Path | None = None
        self.log_path: Path | None = None

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.address in ("0.0.0.0", "") else self.address

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def _backends(self) -> Path:
        """The backends directory the server gets: the install's, with this Python's stub beside
        the Python backend (the bundled server ships one stub per Python version)."""
        if self.install.stub is None:
            return self.install.backends
        assert self.workdir is not None
        backends = self.workdir / "backends"
        for entry in self.install.backends.iterdir():
            (backends / entry.name).mkdir(parents=True)
            for file in entry.iterdir():
                (backends / entry.name / file.name).symlink_to(file)
        shutil.copy2(self.install.stub, backends / "python" / "triton_python_backend_stub")
        return backends

    def command(self, backends: Path) -> list[str]:
        return [str(self.install.binary), "--model-repository", str(self.repository.resolve()),
                "--backend-directory", str(backends), "--http-port", str(self.http_port), "--grpc-port",
                str(self.grpc_port), "--metrics-port", str(self.metrics_port), "--http-address", self.address,
                "--grpc-address", self.address, "--metrics-address", self.address, "--strict-readiness", "true",
                "--exit-timeout-secs", str(self.exit_timeout_s), "--log-verbose", str(self.log_verbose)]

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        if self.process is not None:
            raise ServeError("this server is already started")
        self.workdir = Path(tempfile.mkdtemp(prefix="sacvit-edge-triton-"))
        self.log_path = self.workdir / "tritonserver.log"
        try:
            command = self.command(self._backends())
            env = server_environment(self.install)
            log.info("starting %s", " ".join(command))
            with open(self.log_path, "wb") as out:
                # its own session: a terminal's Ctrl-C reaches this process, which then drains the server
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
            self.wait_ready(timeout_s)
            self.stubs = self._stubs()  # known now: once the server has exited they are no longer its children
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServeError(f"tritonserver exited with code {self.process.returncode} before it was ready:\n"
                                 f"{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.2)
        raise ServeError(f"tritonserver was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        """The server log's last lines that say something (errors first to the eye)."""
        if self.log_path is None or not self.log_path.is_file():
            return "(no log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        keep = [t for t in text if not t.startswith("W") or "error" in t.lower()]  # Triton's warnings are NVML noise here
        return "\n".join(keep[-lines:])

    def wait(self) -> int:
        """Block until the server process ends; its exit code."""
        assert self.process is not None
        return self.process.wait()

    def _stubs(self) -> dict[int, str]:
        """The server's Python-backend stub processes and the shared-memory region each uses
        (read from /proc; empty elsewhere)."""
        out: dict[int, str] = {}
        if self.process is None or not Path("/proc").is_dir():
            return out
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if ppid == self.process.pid and args and args[0].endswith(b"triton_python_backend_stub"):
                region = next((a.decode() for a in args if a.startswith(b"triton_python_backend_shm_region")), "")
                out[int(entry.name)] = region
        return out

    def _clean_after(self, stubs: dict[int, str]) -> None:
        """What a server that did not stop cleanly leaves: stubs still running, and the shared-
        memory regions of theirs (Triton removes them only when it unloads the models, which
        it skips when its exit timeout expires, e.g. with a client's idle connection open)."""
        for pid in stubs:
            try:
                if b"triton_python_backend_stub" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        for region in filter(None, stubs.values()):
            leftover = Path("/dev/shm") / region
            if leftover.exists():
                log.info("removing %s, left by a stopped Python-backend stub", leftover)
                leftover.unlink(missing_ok=True)

    def stop(self) -> int | None:
        """SIGTERM (drains in-flight requests), then SIGKILL after exit_timeout_s + 10 s; cleans up
        what the server's model processes leave behind."""
        code = None
        if self.process is not None:
            stubs = {**self.stubs, **self._stubs()}
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(self.exit_timeout_s + 10)
                except subprocess.TimeoutExpired:
                    log.warning("tritonserver did not stop within %d s of SIGTERM; killing it", self.exit_timeout_s + 10)
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
            with_stubs = self.process.pid
            self.process = None
            try:  # the Python-backend stubs are the server's children, in its session
                os.killpg(with_stubs, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._clean_after(stubs)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        return code

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

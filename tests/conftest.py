"""Shared fixtures: a small random SAC-ViT checkpoint (fast) and the shipped one (real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sacvit_edge.checkpoint import save_checkpoint
from sacvit_edge.config import preset
from sacvit_edge.data import FASHION_CLASSES
from sacvit_edge.model import build_model

REPO = Path(__file__).resolve().parents[1]

# hypothesis keeps a cache (.hypothesis/) in the working directory: keep it out of the checkout
import os as _os  # noqa: E402
import tempfile as _tempfile  # noqa: E402

_os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", _tempfile.mkdtemp(prefix="sacvit-edge-hypothesis-"))
SHIPPED_SAC = REPO / "checkpoints" / "sacvit_tiny_112.pt"
SHIPPED_DEIT = REPO / "checkpoints" / "deit_tiny_112.pt"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """EdgeClassifier("model.pt") exports into a cache: the tests' own, never the user's."""
    import os

    os.environ["SACVIT_EDGE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_cfg():
    return preset("tiny_112", embed_dim=32, depth=3, num_heads=2, reuse_layer=1, gca_start_block=0)


@pytest.fixture(scope="session")
def random_ckpt(tmp_path_factory, tiny_cfg) -> Path:
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    with torch.no_grad():  # spread the random model's confidences so that eta splits images
        model.ee_head.weight.mul_(200)
        model.head.weight.mul_(200)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, FASHION_CLASSES, eta=0.5)


@pytest.fixture(scope="session")
def shipped_sac() -> Path:
    if not SHIPPED_SAC.is_file():
        pytest.fail(f"shipped checkpoint {SHIPPED_SAC} is missing")
    return SHIPPED_SAC


@pytest.fixture(scope="session")
def shipped_export(tmp_path_factory, shipped_sac) -> Path:
    from sacvit_edge.export.bundle import export_checkpoint

    return export_checkpoint(shipped_sac, tmp_path_factory.mktemp("export") / "sacvit").directory


@pytest.fixture(scope="session")
def random_export(tmp_path_factory, random_ckpt) -> Path:
    from sacvit_edge.export.bundle import export_checkpoint

    return export_checkpoint(random_ckpt, tmp_path_factory.mktemp("export") / "random").directory


def _repository_status() -> str | None:
    """`git status` of this checkout (None outside one): what the suite must leave unchanged."""
    import subprocess

    try:
        proc = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def pytest_sessionstart(session):
    import os

    session.config._sacvit_git_status = _repository_status()
    session.config._sacvit_cwd = (os.getcwd(), sorted(os.listdir(os.getcwd())))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when a test, the library, the CLI or a script wrote into the repository or
    the working directory (generated files must never reach git)."""
    import os

    before = getattr(session.config, "_sacvit_git_status", None)
    after = _repository_status()
    cwd, listing = getattr(session.config, "_sacvit_cwd", (None, None))
    problems = []
    if before is not None and after is not None and after != before:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        if new:
            problems.append(f"the test run changed the repository: {new[:10]}")
    if cwd is not None and os.path.isdir(cwd):
        added = sorted(set(os.listdir(cwd)) - set(listing))
        if added:
            problems.append(f"the test run wrote into the working directory {cwd}: {added[:10]}")
    if problems:
        print("\n" + "\n".join(problems))
        session.exitstatus = 1

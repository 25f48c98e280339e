"""Check the import-layer contracts (.importlinter) with import-linter.

    .venv/bin/python scripts/lint_imports.py

The repository keeps `export/`, `runtimes/` and `calibration/` beside `sacvit_edge/` and installs
them as its subpackages (pyproject's package-dir). import-linter reads a package from one folder,
so the installed layout is assembled, Python files only, in a temporary directory (never the
checkout), from pyproject's own mapping, and lint-imports runs there. Also reports import
cycles, counting imports inside functions, which the contracts forbid too. Exit status 0 when
every contract holds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def assemble(into: Path) -> None:
    mapping = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, folder in sorted(mapping.items(), key=lambda kv: kv[0].count(".")):
        shutil.copytree(REPO / folder, into.joinpath(*package.split(".")), dirs_exist_ok=True,
                        ignore=lambda d, names: [n for n in names if not (n.endswith(".py") or (Path(d) / n).is_dir())
                                                 or n in ("__pycache__", "assets")])


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        print("import-linter is not installed (pip install 'sacvit-edge[dev]')", file=sys.stderr)
        return 4
    with tempfile.TemporaryDirectory(prefix="sacvit-layers-") as tmp:
        assemble(Path(tmp))
        env = {**os.environ, "PYTHONPATH": tmp}
        proc = subprocess.run([str(lint), "--no-cache", str(REPO / ".importlinter")], cwd=tmp, env=env)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())

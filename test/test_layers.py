"""The package's layering (.importlinter) holds: the ROS-free core never imports the node, the harness, the
benchmarks or the command line, and the shells import only downwards. `lint-imports` (PyPI import-linter) checks
it; a copy of the package with one upward import proves the contracts catch one."""

from pathlib import Path
import shutil
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / ".importlinter"


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(tool).exists():
        pytest.skip("import-linter is not installed (requirements.txt pins it)")
    # lint-imports finds geoloc_ros on sys.path: the working directory comes first, so `package_parent`'s copy
    return subprocess.run([tool, "--no-cache", "--no-logo", str(CONFIG)], cwd=package_parent, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_parent)})


def test_layering_contracts_hold():
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize("module, upward", [
    ("mapping", "from geoloc_ros.node import params"),         # core -> node
    ("imaging", "import geoloc_ros.cli.demo"),                 # core -> cli
    ("node", "from geoloc_ros.bench import report"),           # node -> a shell above it
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, upward):
    shutil.copytree(REPO / "geoloc_ros", tmp_path / "geoloc_ros", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "geoloc_ros" / module / "upward_probe.py").write_text(f"def late():\n    {upward}\n")
    out = lint_imports(tmp_path)
    assert out.returncode != 0, out.stdout
    assert f"geoloc_ros.{module}.upward_probe" in out.stdout

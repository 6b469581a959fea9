"""The repository passes ruff with the project's settings (ruff.toml: line length 120, pycodestyle, pyflakes,
import order), so style problems surface in CI, not in review."""

from pathlib import Path
import shutil
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (requirements.txt pins it)")
    out = subprocess.run([ruff, "check", "--no-cache", "--output-format", "concise", str(REPO)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

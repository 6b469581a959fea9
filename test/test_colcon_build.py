"""The robot path of docs/install.md: both packages build with colcon in a fresh workspace, with the command the
docs give, and install what the launch file and the node need."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

import pytest

REPO = Path(__file__).resolve().parents[1]
# The command in docs/install.md ("On a robot"), run from the workspace root.
COLCON_COMMAND = ["colcon", "build", "--base-paths", "src", "src/geoloc_ros/geoloc_msgs",
                  "--cmake-args", "-DBUILD_TESTING=OFF"]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "__pycache__", "*.egg-info",
                                     ".pytest_cache", "runs")


def test_install_docs_give_this_colcon_command():
    assert " ".join(COLCON_COMMAND) in (REPO / "docs" / "install.md").read_text()


@pytest.mark.skipif(shutil.which("colcon") is None, reason="colcon is not installed in this environment")
def test_colcon_builds_both_packages(tmp_path):
    shutil.copytree(REPO, tmp_path / "src" / "geoloc_ros", ignore=NOT_SOURCES)
    env = dict(os.environ, PYTHON_EXECUTABLE=sys.executable)
    result = subprocess.run(COLCON_COMMAND + [f"-DPython3_EXECUTABLE={sys.executable}"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    install = tmp_path / "install"
    share = install / "geoloc_ros" / "share" / "geoloc_ros"
    for name in ("package.xml", "launch/vpr.launch.py", "config/vpr.yaml", "launch/slam.launch.py",
                 "config/pose_graph.yaml"):
        assert (share / name).is_file(), f"colcon did not install share/geoloc_ros/{name}"
    for script in ("vpr_node", "geoloc", "pose_graph_node"):
        assert (install / "geoloc_ros" / "lib" / "geoloc_ros" / script).is_file()
    assert list((install / "geoloc_msgs").rglob("geoloc_msgs/msg/_place_recognition.py"))
    assert (install / "geoloc_ros" / "share" / "ament_index" / "resource_index" / "packages" / "geoloc_ros").exists()

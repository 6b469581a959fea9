"""The package metadata tells the truth: package.xml parses, and every import the code makes is declared
where the robot's installer looks for it (package.xml for rosdep, requirements.txt for pip)."""

import ast
from pathlib import Path
import re
import sys

from catkin_pkg.package import parse_package
import pytest

REPO = Path(__file__).resolve().parents[1]

# Python module -> rosdep key (declared in package.xml).
ROSDEP_KEYS = {
    "rclpy": "rclpy", "rcl_interfaces": "rcl_interfaces", "builtin_interfaces": "builtin_interfaces",
    "std_msgs": "std_msgs", "std_srvs": "std_srvs", "sensor_msgs": "sensor_msgs",
    "geometry_msgs": "geometry_msgs", "nav_msgs": "nav_msgs", "geographic_msgs": "geographic_msgs",
    "diagnostic_msgs": "diagnostic_msgs", "lifecycle_msgs": "lifecycle_msgs", "geoloc_msgs": "geoloc_msgs",
    "visualization_msgs": "visualization_msgs",
    "launch": "launch", "launch_ros": "launch_ros", "ament_index_python": "ament_index_python",
    "numpy": "python3-numpy", "cv2": "python3-opencv", "pyproj": "python3-pyproj", "tqdm": "python3-tqdm",
    "matplotlib": "python3-matplotlib", "yaml": "python3-yaml", "scipy": "python3-scipy", "tf2_msgs": "tf2_msgs",
    "PIL": "python3-pil",
}
# Python module -> pip distribution (pinned in requirements.txt): no rosdep key on every distro.
PIP_ONLY = {
    "torch": "torch", "torchvision": "torchvision", "open_clip": "open_clip_torch", "faiss": "faiss-cpu",
    "rosbags": "rosbags", "rosbags_image": "rosbags-image", "safetensors": "safetensors", "onnx": "onnx",
    "onnxruntime": "onnxruntime", "gtsam": "gtsam", "evo": "evo", "pycolmap": "pycolmap",
}
# Python module -> why it is neither pinned nor a rosdep key: optional, imported only where it is used.
OPTIONAL = {"tensorrt": "CUDA machines only (tensorrt-cu12/-cu13 wheels); deploy/tensorrt_backend.py",
            "ray": "the Ray engine's extra (setup.py extras 'ray', requirements-ray.txt); mapping/ray_build.py"}


def imported_modules(paths):
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path.relative_to(REPO))
    return found


def product_sources():
    return sorted((REPO / "geoloc_ros").rglob("*.py")) + sorted((REPO / "launch").glob("*.py")) + [REPO / "setup.py"]


def requirement_names():
    names = set()
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[=<>!~\[ ]", line)[0].lower().replace("_", "-"))
    return names


def test_package_xml_is_valid_format_3():
    package = parse_package(REPO / "package.xml")
    package.validate()
    assert package.name == "geoloc_ros" and package.package_format == 3
    assert package.get_build_type() == "ament_python"
    assert all("@" in m.email for m in package.maintainers)


def test_every_import_is_declared():
    exec_depends = {d.name for d in parse_package(REPO / "package.xml").exec_depends}
    pip_names = requirement_names()
    undeclared = []
    for module, where in sorted(imported_modules(product_sources()).items()):
        if module in sys.stdlib_module_names or module in {"geoloc_ros", "setuptools"} or module in OPTIONAL:
            continue
        if module in ROSDEP_KEYS:
            if ROSDEP_KEYS[module] not in exec_depends:
                undeclared.append(f"{module} ({where}): add <exec_depend>{ROSDEP_KEYS[module]}</exec_depend>")
        elif module in PIP_ONLY:
            if PIP_ONLY[module].lower().replace("_", "-") not in pip_names:
                undeclared.append(f"{module} ({where}): pin {PIP_ONLY[module]} in requirements.txt")
        else:
            undeclared.append(f"{module} ({where}): unknown import; declare it and add it to this test's tables")
    assert not undeclared, "\n".join(undeclared)


def test_interface_package_is_valid():
    package = parse_package(REPO / "geoloc_msgs" / "package.xml")
    package.validate()
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_setup_declares_console_scripts_and_share_files():
    tree = ast.parse((REPO / "setup.py").read_text())
    text = ast.unparse(tree)
    for script in ("vpr_node = geoloc_ros.vpr_node:main", "geoloc = geoloc_ros.cli:main",
                   "pose_graph_node = geoloc_ros.slam.pose_graph_node:main"):
        assert script in text
    for share in ("launch", "config", "maps/nordland_demo"):
        assert f"/{share}" in text


@pytest.mark.parametrize("target", ["geoloc_ros.vpr_node:main", "geoloc_ros.cli:main",
                                    "geoloc_ros.slam.pose_graph_node:main"])
def test_console_script_targets_import(target):
    import importlib

    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))

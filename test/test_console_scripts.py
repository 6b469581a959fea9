"""The console scripts as an outsider runs them: `geoloc`, `vpr_node` and `pose_graph_node` straight from the
environment's bin/ with AMENT_PREFIX_PATH unset and nothing else of ROS's set (an activated venv, a plain pip
install, a cron job): HOME, a system PATH, and PYTHONPATH naming this checkout so that its code is the one run.
The nodes run in a DDS domain of their own, so their /diagnostics reach no other test."""

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DOMAIN = str(100 + os.getpid() % 100)


def bare_env(**extra) -> dict:
    # GEOLOC_CACHE: the test run's cache (conftest), so the node's ONNX export is not written beside the bundled map
    return {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
            "GEOLOC_CACHE": os.environ["GEOLOC_CACHE"], **extra}


def script(name: str) -> str:
    path = BIN / name
    if not path.is_file():
        pytest.skip(f"{path}: the package is not installed in this environment")
    return str(path)


def test_geoloc_runs_without_ament_prefix_path():
    env = bare_env()
    r = subprocess.run([script("geoloc"), "map", "info", "maps/nordland_demo"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "encoder" in r.stdout and "AMENT_PREFIX_PATH" not in r.stderr
    # the installed files are found all the same: the share directory next to the interpreter, or this checkout
    code = "from geoloc_ros.resources import resource; print(resource('config', 'vpr.yaml'))"
    r = subprocess.run([str(BIN / "python"), "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and Path(r.stdout.strip()).is_file(), r.stderr[-3000:]


def run_until(cmd, env, ready, timeout: float = 120.0) -> str:
    """Start `cmd`, wait until `ready(output so far)` or it exits, then SIGINT it; its whole output. Asserts it
    was ready and exited cleanly."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"console_script_{os.getpid()}_{Path(cmd[0]).name}.log"
    with open(log, "w") as out:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline, was_ready = time.monotonic() + timeout, False
        while p.poll() is None and time.monotonic() < deadline and not was_ready:
            was_ready = ready(log.read_text())
            time.sleep(0.2)
        alive = p.poll() is None
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    text = log.read_text()
    log.unlink()
    assert alive and was_ready, f"{cmd[0]} exited ({p.returncode}) or was never ready:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    return text


def test_vpr_node_runs_without_ament_prefix_path():
    env = bare_env(ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [script("vpr_node"), "--ros-args", "-p", f"map_path:=['{REPO / 'maps' / 'nordland_demo'}']",
           "-p", "device:=cpu"]
    run_until(cmd, env, lambda out: "active: listening" in out)


def test_pose_graph_node_runs_without_ament_prefix_path():
    import rclpy
    from rclpy.context import Context

    env = bare_env(ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    context = Context()
    rclpy.init(context=context, domain_id=int(DOMAIN))
    probe = rclpy.create_node("console_script_probe", context=context)
    try:
        seen = lambda _: "geoloc_pose_graph" in probe.get_node_names()  # noqa: E731
        run_until([script("pose_graph_node")], env, seen)
    finally:
        probe.destroy_node()
        context.try_shutdown()


def test_an_installed_layout_finds_its_share_directory_without_ament_prefix_path(tmp_path):
    """A pip --prefix/--user install or an unsourced colcon install: <prefix>/lib/pythonX.Y/site-packages/geoloc_ros
    beside <prefix>/share/geoloc_ros, and no AMENT_PREFIX_PATH: the installed config is found, not a path into
    site-packages."""
    prefix = tmp_path / "prefix"
    package = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (package / "geoloc_ros").mkdir(parents=True)
    for name in ("__init__.py", "resources.py"):
        (package / "geoloc_ros" / name).write_bytes((REPO / "geoloc_ros" / name).read_bytes())
    share = prefix / "share" / "geoloc_ros"
    (share / "config").mkdir(parents=True)
    (share / "package.xml").write_bytes((REPO / "package.xml").read_bytes())
    (share / "config" / "vpr.yaml").write_bytes((REPO / "config" / "vpr.yaml").read_bytes())
    code = "from geoloc_ros.resources import resource; print(resource('config', 'vpr.yaml'))"
    r = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(package)!r}); {code}"],
                       env=bare_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert Path(r.stdout.strip()) == share / "config" / "vpr.yaml"

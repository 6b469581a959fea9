"""launch/vpr.launch.py and the ROS 2 command-line tools, for real: `ros2 launch geoloc_ros vpr.launch.py` takes
the node to active on the bundled map, and `ros2 lifecycle get`, `ros2 param get|set`, `ros2 service call
~/reload_map` and `ros2 topic echo --once /diagnostics` answer as docs/node.md says.

The real `ros2` CLI runs as subprocesses (with `--no-daemon` where the verb has it, so no daemon outlives the test).
One launch serves every test of this module. tools/venv.sh installs the launch system and CLI from
../shared/vendor/ros2 and registers geoloc_ros in the venv's ament index; without them these tests skip and say why.
"""

import os
from pathlib import Path
import shutil
import subprocess
import sys

from ament_index_python.packages import get_package_share_directory
import pytest
from ros2_cli import NO_DAEMON, LaunchedNode, launch_tools_missing, ros2
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch" / "vpr.launch.py"
BUNDLED_MAP = REPO / "maps" / "nordland_demo"


def test_setup_installs_launch_config_and_maps(tmp_path):
    """A real install of setup.py's data_files into a temporary prefix (what colcon lays out on a robot)."""
    r = subprocess.run([sys.executable, "setup.py", "-q", "install_data", "--install-dir", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    share = tmp_path / "share" / "geoloc_ros"
    assert (share / "launch" / "vpr.launch.py").read_text() == LAUNCH.read_text()
    assert (share / "config" / "vpr.yaml").is_file() and (share / "package.xml").is_file()
    assert (share / "config" / "fastdds_large_frames.xml").is_file()
    assert (tmp_path / "share" / "ament_index" / "resource_index" / "packages" / "geoloc_ros").is_file()
    bundled = [p.name for p in BUNDLED_MAP.iterdir() if p.is_file()]
    assert sorted(p.name for p in (share / "maps" / "nordland_demo").iterdir()) == sorted(bundled)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """`ros2 launch geoloc_ros vpr.launch.py` (the package form, so the ament index registration is what is
    tested), in a namespace of its own; yields the LaunchedNode once the node is active."""
    reason = launch_tools_missing()
    if reason:
        pytest.skip(reason)
    ns = f"/launch_test_{os.getpid()}"
    log = tmp_path_factory.mktemp("launch") / "ros2_launch.log"
    with LaunchedNode(["launch", "geoloc_ros", "vpr.launch.py", f"namespace:={ns}",
                       f"camera_topic:={ns}/camera/image_raw"], f"{ns}/geoloc_vpr", log) as node:
        yield node


def test_launch_takes_the_node_to_active(launched):
    out = ros2("lifecycle", "get", launched.name, *NO_DAEMON)
    assert out.strip() == "active [3]", out  # docs/node.md: what `ros2 lifecycle get` says


def test_launch_arguments_reach_the_node_parameters(launched):
    params = yaml.safe_load(ros2("param", "dump", launched.name, *NO_DAEMON))[launched.name]["ros__parameters"]
    assert params["map_path"] == [str(Path(get_package_share_directory("geoloc_ros")) / "maps" / "nordland_demo")]
    assert params["image_topics"] == [f"{launched.name.rsplit('/', 1)[0]}/camera/image_raw"]
    assert params["autostart"] is False  # the launch file drives the transitions itself
    from geoloc_ros.node.params import PARAMETERS

    # every other parameter comes from config/vpr.yaml, which the launch file loads
    config = yaml.safe_load((REPO / "config" / "vpr.yaml").read_text())["/**/geoloc_vpr"]["ros__parameters"]
    assert {p.name for p in PARAMETERS} <= set(params)
    assert {k: params[k] for k in config if k not in ("map_path", "image_topics", "autostart")} == \
        {k: v for k, v in config.items() if k not in ("map_path", "image_topics", "autostart")}


def launched_node_environment(launched) -> dict:
    """The environment of the vpr_node process the launch started (same session as the `ros2 launch` process)."""
    sid = os.getsid(launched.process.pid)
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getsid(int(proc.name)) == sid and \
                    b"vpr_node" in (proc / "cmdline").read_bytes():
                pairs = (item.split(b"=", 1) for item in (proc / "environ").read_bytes().split(b"\0") if b"=" in item)
                return {k.decode(): v.decode() for k, v in pairs}
        except (OSError, ProcessLookupError):
            continue  # a process that ended while we looked
    raise AssertionError("no vpr_node process in the launch's session")


def test_launch_exports_the_large_frames_dds_profile(launched):
    """vpr.launch.py's dds_profile: config/fastdds_large_frames.xml for the processes it starts, unless
    FASTDDS_DEFAULT_PROFILES_FILE was set already (then that one is kept)."""
    share = Path(get_package_share_directory("geoloc_ros"))
    expected = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE") or str(share / "config" / "fastdds_large_frames.xml")
    assert launched_node_environment(launched).get("FASTDDS_DEFAULT_PROFILES_FILE") == expected


def test_diagnostics_echo_reports_the_active_node(launched):
    out = ros2("topic", "echo", "--once", *NO_DAEMON, "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
                   timeout=60)
    assert f"{launched.name.rsplit('/', 1)[1]}: place recognition" in out, out
    assert "key: state" in out and "value: active" in out, out
    assert "value: nordland_demo" in out, out  # key maps


def test_param_set_and_reload_map(launched, tmp_path):
    """`ros2 param set map_path` + `~/reload_map` swaps the maps; a map that is not there fails the call with the
    reason and the old maps stay (docs/node.md)."""
    copy = tmp_path / "second_map"
    shutil.copytree(BUNDLED_MAP, copy)
    out = ros2("param", "set", launched.name, "map_path", f"['{BUNDLED_MAP}', '{copy}']", *NO_DAEMON)
    assert "Set parameter successful" in out, out
    out = ros2("service", "call", f"{launched.name}/reload_map", "std_srvs/srv/Trigger", timeout=120)
    assert "success=True" in out and out.count("nordland_demo (480 keyframes)") == 2, out

    missing = tmp_path / "no_such_map"
    ros2("param", "set", launched.name, "map_path", f"['{missing}']", *NO_DAEMON)
    out = ros2("service", "call", f"{launched.name}/reload_map", "std_srvs/srv/Trigger", timeout=120)
    assert "success=False" in out and "keeping the old maps" in out and str(missing) in out, out
    after = launched.diagnostic_values()  # still active, on the two maps of the successful reload
    assert after["state"] == "active" and after["map_keyframes"] == "960", after


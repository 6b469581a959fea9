"""Test helpers around the real `ros2` command line: run a verb as a subprocess, and hold a `ros2 launch` (or any
node process) open until its lifecycle node reaches a state."""

from __future__ import annotations

import os
from pathlib import Path
import re
import signal
import subprocess
import sys
import time

ROS2 = Path(sys.executable).parent / "ros2"
# No daemon (nothing outlives a test); without one a verb discovers the graph itself for --spin-time seconds, and
# the default 0.5 s often misses a node on a loaded machine ("Node not found"; 2 s still does now and then, so
# ros2() asks again).
NO_DAEMON = ("--no-daemon", "--spin-time", "2")


def launch_tools_missing() -> str:
    """Why the launch tests cannot run here ('' when they can)."""
    try:
        import launch_ros  # noqa: F401
        import ros2cli  # noqa: F401
    except ImportError as e:
        vendor = Path(__file__).resolve().parents[2] / "shared" / "vendor" / "ros2"
        why = ("this environment was built without it: rerun tools/venv.sh" if vendor.is_dir() else
               f"tools/venv.sh installs it from {vendor}, which is missing")
        return f"the ROS 2 launch system / CLI is not installed ({e}); {why}"
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        get_package_share_directory("geoloc_ros")
    except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH unset (tools/venv.sh sets it)
        return "geoloc_ros is in no ament index on AMENT_PREFIX_PATH (tools/venv.sh registers it; or a colcon install)"
    if not ROS2.is_file():
        return f"no ros2 command beside {sys.executable}"
    return ""


def ros2(*args: str, timeout: float = 60, check: bool = True) -> str:
    """stdout + stderr of `ros2 ARGS...`; raises with the output when it fails and `check` is set."""
    for _ in range(3):  # a daemon-less verb that missed the node in its discovery window says so; ask again
        r = subprocess.run([str(ROS2), *args], capture_output=True, text=True, timeout=timeout)
        out = r.stdout + r.stderr
        if not (r.returncode != 0 and "Node not found" in out):
            break
    if check and r.returncode != 0:
        raise AssertionError(f"ros2 {' '.join(args)} exited {r.returncode}:\n{out[-3000:]}")
    return out


class LaunchedNode:
    """`ros2 ARGS...` (e.g. a launch) as a process writing to `log`, entered once the lifecycle node `name`
    reports `wait_for`; on exit SIGINT, then SIGTERM and SIGKILL of its process group."""

    def __init__(self, ros2_args, name: str, log: Path, wait_for: str = "active", timeout: float = 120):
        self.args, self.name, self.log = list(ros2_args), name, Path(log)
        self.wait_for, self.timeout = wait_for, timeout
        self.process = None

    def __enter__(self):
        self._log = open(self.log, "w")
        self.process = subprocess.Popen([str(ROS2), *self.args], stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self._wait_for_state()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_for_state(self):
        from lifecycle_msgs.srv import GetState
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        context = Context()
        rclpy.init(context=context)
        node = rclpy.create_node("launch_test_client", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        try:
            client = node.create_client(GetState, f"{self.name}/get_state")
            deadline, label = time.monotonic() + self.timeout, ""
            while time.monotonic() < deadline and label != self.wait_for:
                if self.process.poll() is not None:
                    raise AssertionError(f"ros2 {' '.join(self.args)} exited {self.process.returncode}:\n"
                                         f"{self.log_tail()}")
                if client.wait_for_service(timeout_sec=1.0):
                    fut = client.call_async(GetState.Request())
                    executor.spin_until_future_complete(fut, timeout_sec=5)
                    label = fut.result().current_state.label if fut.done() and fut.result() else ""
                time.sleep(0.2)
            if label != self.wait_for:
                raise AssertionError(f"{self.name} did not reach {self.wait_for} within {self.timeout} s "
                                     f"(last state {label!r}):\n{self.log_tail()}")
        finally:
            executor.shutdown()
            node.destroy_node()
            context.try_shutdown()

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def diagnostic_values(self, timeout: float = 30) -> dict:
        """The key/values of the node's next /diagnostics status, read with `ros2 topic echo --once`."""
        out = ros2("topic", "echo", "--once", *NO_DAEMON, "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
                   timeout=timeout)
        return {k: v.strip("'\"") for k, v in re.findall(r"key: (\S+)\n\s*value: (.*)", out)}

    def __exit__(self, *exc):
        # SIGINT as Ctrl-C would; a shell that started this run in the background leaves SIGINT ignored in its
        # children, so then SIGTERM, then SIGKILL, each to the process group (the launch and the node it started).
        for sig, wait_s in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.process is None or self.process.poll() is not None:
                break
            if sig == signal.SIGINT:
                self.process.send_signal(sig)
            else:
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()
        return False

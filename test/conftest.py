"""Shared test set-up: where the real data is, and DDS isolation between concurrent test runs."""

import os
from pathlib import Path
import tempfile

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Each pytest process talks DDS on its own domain, so two test runs on one machine never hear each other,
# and discovery stays on this machine.
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
# Artefacts of backend "auto" (ONNX exports, checks) go to a cache of this run, not into maps/ of the checkout or
# the user's ~/.cache (geoloc_ros/deploy/cache.py); tests of the cache itself unset it.
os.environ.setdefault("GEOLOC_CACHE", tempfile.mkdtemp(prefix="geoloc_test_cache_"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is missing (it sits beside the repository as ../shared)")
    return SHARED_DATA


@pytest.fixture
def rclpy_context():
    """A fresh rclpy context per test, shut down afterwards even when the test fails."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    yield context
    context.try_shutdown()


# The node's settings in DDS tests: frequent /diagnostics, CPU inference.
FAST = {"diagnostics_period_s": 0.2, "device": "cpu"}


@pytest.fixture
def graph(rclpy_context):
    """(start_node(params, autostart) -> InProcessNode, harness); everything closed afterwards."""
    from geoloc_ros.replay import Harness, InProcessNode

    made = []
    harness = Harness(rclpy_context)

    def start(parameters, autostart=True):
        n = InProcessNode(rclpy_context, {**FAST, **parameters}, autostart=autostart)
        made.append(n)
        return n

    yield start, harness
    harness.close()
    for n in made:
        n.close()

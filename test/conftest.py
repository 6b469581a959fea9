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


@pytest.fixture
def street_map(shared_data, tmp_path):
    """A map `streets` of the first 6 real street photos (~614x480) of toy_streets/database, geotagged 50 m apart,
    built with the tiny encoder carried in the map: (photo folder, records, map directory)."""
    from geoloc_ros.datasets import read_sequence
    from geoloc_ros.mapping.builders import add_dataset, new_map_for
    from geoloc_ros.model import save_encoder
    from geoloc_ros.model.testing import tiny_encoder

    folder = shared_data / "toy_streets" / "database"
    recs = read_sequence(folder, spacing=50.0, origin=(45.0, 7.0))[:6]
    enc = tiny_encoder()
    db = new_map_for(enc, "streets")
    add_dataset(db, enc, recs, progress=False)
    db.attach_encoder(save_encoder(enc, tmp_path / "enc"))
    db.save(tmp_path / "map")
    return folder, recs, tmp_path / "map"

"""Shared test set-up: where the real data is, DDS isolation between concurrent test runs, and the issue-16 PNG
that decodes to 30000x30000."""

import os
from pathlib import Path
import struct
import tempfile
import zlib

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
PNG_BOMB_SIDE = 30000  # the PNG: 30000 x 30000 = 900 MP, 2.7 GB as RGB once decoded

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


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def zeros_zlib(n_chunks: int, chunk: int) -> bytes:
    """A zlib stream of n_chunks * chunk zero bytes, built in milliseconds: one raw deflate block of `chunk`
    zeros (compressed from a fresh state and fully flushed, so it refers to nothing before it) repeated, then the
    final block and the Adler-32 of the whole."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(b"\0" * chunk) + c.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(n_chunks):
        adler = zlib.adler32(b"\0" * chunk, adler)
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    return b"\x78\xda" + block * n_chunks + end + struct.pack(">I", adler)


@pytest.fixture(scope="session")
def png_bomb() -> bytes:
    """A valid PNG that decodes to 30000x30000 (1-bit grey, all rows zero: 112 MB of raw rows, 0.1 MB on disk;
    the issue's 979 KB RGB file decodes to the same size, and the header is all that counts)."""
    row = 1 + PNG_BOMB_SIDE // 8  # filter byte + 30000 one-bit pixels
    idat = zeros_zlib(PNG_BOMB_SIDE // 1000, 1000 * row)
    ihdr = struct.pack(">IIBBBBB", PNG_BOMB_SIDE, PNG_BOMB_SIDE, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")

"""The bundled demo assets: maps/nordland_demo (summer frames 19210..24000, the validation stretch) and its
winter recording winter_val.mcap. Skipped until they are built (docs/maps.md gives the commands)."""

from pathlib import Path

import numpy as np
import pytest

from geoloc_ros.mapping import MapDatabase
from geoloc_ros.mapping.bag import bag_keyframes

DEMO = Path(__file__).resolve().parents[1] / "maps" / "nordland_demo"
BAG = DEMO / "winter_val.mcap"

pytestmark = pytest.mark.skipif(not (DEMO / "manifest.json").is_file() or not BAG.is_file(),
                                reason="maps/nordland_demo map or winter_val.mcap not built yet")


@pytest.fixture(scope="module")
def demo():
    from geoloc_ros.model import load_encoder

    db = MapDatabase.load(DEMO)
    encoder = load_encoder(db.encoder_path, device="cpu")
    return MapDatabase.load(DEMO, encoder=encoder), encoder


def test_demo_map_is_the_validation_stretch_and_small(demo):
    db, encoder = demo
    labels = [k.label for k in db.keyframes()]
    assert labels == [f"images-{n:05d}.png" for n in range(19210, 24001, 10)]
    assert all(k.synthetic for k in db.keyframes())
    assert db.keyframe(1).y - db.keyframe(0).y == pytest.approx(10.0, abs=0.01)
    # what the repository ships: not the git-ignored geoloc_cache/ that running the demo writes beside the encoder
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file() and "geoloc_cache" not in p.parts)
    assert size <= 20 * 2**20, f"maps/nordland_demo is {size / 2**20:.1f} MiB"


def test_winter_bag_matches_the_map_and_is_recognised(demo):
    db, encoder = demo
    frames = bag_keyframes(BAG, "/camera/image_raw", "/gnss/fix")
    keyframes, images = zip(*frames)
    assert len(keyframes) == len(db) == 480
    stamps = np.array([k.stamp_ns for k in keyframes])
    assert np.all(np.diff(stamps) == 100_000_000)  # 10 Hz camera
    # Same frame number, same place: the winter fix lies on the summer keyframe.
    for i in (0, 123, 479):
        x, y, _ = db.frame.to_local(keyframes[i].lat, keyframes[i].lon)
        assert np.hypot(x - db.keyframe(i).x, y - db.keyframe(i).y) < 0.01
    results = db.search(encoder.encode(list(images)), 5)
    recall1 = np.mean([abs(r[0].keyframe.id - i) <= 2 for i, r in enumerate(results)])
    recall5 = np.mean([any(abs(m.keyframe.id - i) <= 2 for m in r) for i, r in enumerate(results)])
    print(f"winter -> summer on the demo map: R@1 {recall1:.3f}, R@5 {recall5:.3f} (+-2 frames ~ 25 m)")
    assert recall1 > 10 * 5 / 480  # an order of magnitude above chance (5 of 480 frames count as right)
    assert recall5 >= recall1

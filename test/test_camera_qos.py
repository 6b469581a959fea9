"""image_qos `auto` (the default): a best-effort and a reliable camera in another process (test/camera_publisher.py,
a real photo resized to 640x480 and 1280x720, raw rgb8 and JPEG) are both answered by a vpr_node process started
with default parameters; /diagnostics names the reliability chosen per topic and counts the re-subscriptions.

Both processes load config/fastdds_large_frames.xml, as under vpr.launch.py (the camera launched beside the node):
without it best-effort camera-sized raw frames between processes are mostly lost (docs/node.md, "Camera QoS";
test_best_effort_without_the_profile_is_measured prints what arrives then). A module of its own: its vpr_node must
be the only one on /diagnostics while it counts frames."""

import os

import numpy as np
import pytest
from test_camera_frames import BUNDLED_MAP, REPO, counters, publish

pytest.importorskip("rclpy")

PROFILE = REPO / "config" / "fastdds_large_frames.xml"
COUNT = 5


def test_auto_follows_the_publishers():
    from rclpy.qos import ReliabilityPolicy

    from geoloc_ros.node.camera_qos import auto_reliability

    assert auto_reliability([]) == "reliable"  # nobody yet: reliable, as the publishers most drivers use
    assert auto_reliability([ReliabilityPolicy.RELIABLE] * 2) == "reliable"
    assert auto_reliability([ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT]) == "best_effort"
    assert auto_reliability(["BEST_EFFORT"]) == "best_effort"


@pytest.fixture(scope="module")
def photo(shared_data):
    return shared_data / "geometry" / "lund_street" / "01.jpg"


def test_best_effort_without_the_profile_is_measured(photo, tmp_path, monkeypatch):
    """What a best-effort 640x480 raw camera without the profile delivers to a node with defaults (also without
    it): printed (docs/node.md quotes test/measure_camera_qos.py), asserted only to be matched. Placed before the
    module's node starts, so that its node is the only vpr_node on /diagnostics."""
    from geoloc_ros.replay import node_process

    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)  # for the node's and the camera's process
    log = tmp_path / "vpr_node.log"
    with node_process([f"map_path:=['{BUNDLED_MAP}']"], log, name="camera_qos_bare") as h:
        assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=90), log.read_text()[-3000:]
        camera = f"/camera_qos_bare_{os.getpid()}/camera/image_raw"
        sent = publish(camera, photo, "640x480", "raw", "best_effort", count=20)
        assert sent["published"] == 20 and sent["matched"] >= 1, sent
        h.wait_for(lambda: False, timeout=2)
        d = h.diag_values()
        print(f"image_qos auto, best effort 640x480 raw, no profile: received {d['frames_received']}/20, "
              f"processed {d['frames_processed']}, frames_missing {d.get('frames_missing')}")
        assert int(d["frames_received"]) <= 20 and d["image_qos"] == "auto"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """vpr_node as a process with default parameters (image_qos left alone), both processes with the profile."""
    from geoloc_ros.replay import node_process

    saved = os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE")
    os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE)  # the node's process and every publisher's
    log = tmp_path_factory.mktemp("camera_qos") / "vpr_node.log"
    try:
        with node_process([f"map_path:=['{BUNDLED_MAP}']"], log, name="camera_qos") as h:
            assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=90), log.read_text()[-3000:]
            assert h.diag_values()["image_qos"] == "auto"
            h.camera = f"/camera_qos_{os.getpid()}/camera/image_raw"
            yield h
    finally:
        if saved is None:
            os.environ.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
        else:
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = saved


@pytest.mark.parametrize("qos", ["best_effort", "reliable"])
@pytest.mark.parametrize("size, fmt", [("640x480", "raw"), ("1280x720", "raw"), ("640x480", "jpeg"),
                                       ("1280x720", "jpeg")])
def test_cameras_of_either_qos_are_answered_with_defaults(node, photo, size, fmt, qos):
    topic = node.camera + ("/compressed" if fmt == "jpeg" else "")
    received0, processed0 = counters(node)
    changes0 = int(node.diag_values().get("image_qos_changes", 0))
    sent = publish(node.camera, photo, size, fmt, qos, count=COUNT)
    assert sent["published"] == COUNT and sent["matched"] >= 1, sent  # matched: a best-effort one too
    arrived = node.wait_for(lambda: counters(node)[0] >= received0 + COUNT and counters(node)[1] > processed0,
                            timeout=20)
    d = node.diag_values()
    received, processed = counters(node)
    print(f"image_qos auto, {qos} publisher {size} {fmt}: received {received - received0}/{COUNT}, processed "
          f"{processed - processed0}, re-subscriptions {int(d.get('image_qos_changes', 0)) - changes0}")
    assert arrived, f"{qos} {size} {fmt}: received {received - received0} of {COUNT}; {d}"
    if qos == "best_effort":  # the node went best effort for it (and back to reliable once it left)
        assert int(d["image_qos_changes"]) > changes0, d
    # the harness's own reliable publisher stays on the topic: with the camera gone, reliable again
    assert node.wait_for(lambda: node.diag_values().get(f"image_qos {topic}") == "reliable", timeout=10), d
    assert int(node.diag_values()["frames_rejected"]) == 0


def test_frames_missing_are_counted_from_the_stamps():
    from geoloc_ros.node.camera_watch import CameraWatch, StampGaps

    gaps, period = StampGaps(), 33_333_333
    t0 = 1_700_000_000 * 10**9
    stamps = [t0 + i * period for i in range(40) if i not in (20, 21, 30)]  # 3 frames lost on the way
    assert sum(gaps.add(s) for s in stamps) == 3 and gaps.missing == 3
    assert gaps.add(t0) == 0 and gaps.add(0) == 0  # back in time (a replay restarting), no stamp: nothing
    assert gaps.add(t0 + 10**12) == 0  # a long pause is not frames lost
    heavy, rng = StampGaps(), np.random.default_rng(0)  # two frames in three lost: most steps span periods
    kept = [t0 + i * period for i in range(300) if i < 6 or rng.random() < 0.35]
    for s in kept:
        heavy.add(s)
    lost = kept[-1] // period - kept[0] // period + 1 - len(kept)
    assert abs(heavy.missing - lost) <= 0.1 * lost, (heavy.missing, lost)

    watch = CameraWatch(["/cam"], 5.0, "auto", lambda topic: "best_effort")
    for s in stamps:
        watch.on_frame("/cam", s)
    assert watch.diagnostics() == {"frames_missing": 3, "frames_missing /cam": 3}
    (warning,) = watch.warnings(lambda topic: 1)
    assert "3 frames missing" in warning and "fastdds_large_frames.xml" in warning and "best effort" in warning
    assert CameraWatch(["/cam"], 0.0, "auto").warnings(lambda topic: 1) == []  # the watch off

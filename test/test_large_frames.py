"""config/fastdds_large_frames.xml, the Fast DDS profile vpr.launch.py exports (docs/node.md, "Raw frames
between processes"): with it in the camera's and the node's processes, camera-sized raw frames fit the
shared-memory segment and best-effort ones arrive. A module of its own: its vpr_node must be the only one on
/diagnostics while it counts frames (the harness tells nodes apart by name, and every test node is geoloc_vpr)."""

import os

from test_camera_frames import BUNDLED_MAP, COUNT, REPO, counters, publish

LARGE_FRAMES_PROFILE = REPO / "config" / "fastdds_large_frames.xml"


def test_large_frames_profile_carries_best_effort_raw_frames(shared_data, tmp_path, monkeypatch):
    """config/fastdds_large_frames.xml in the camera's and the node's processes (FASTDDS_DEFAULT_PROFILES_FILE, as
    vpr.launch.py sets it): 640x480 and 1280x720 rgb8 frames fit the 16 MB shared-memory segment, so a best-effort
    camera (the sensor-data QoS most drivers publish with) reaches a node subscribing with image_qos:=sensor_data,
    every frame, where without the profile those frames are lost (the test above)."""
    from geoloc_ros.replay import node_process

    photo = shared_data / "geometry" / "lund_street" / "01.jpg"

    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(LARGE_FRAMES_PROFILE))  # the node and the publisher
    log = tmp_path / "vpr_node.log"
    with node_process([f"map_path:=['{BUNDLED_MAP}']", "image_qos:=sensor_data"], log, name="large_frames") as h:
        assert h.wait_for(lambda: h.diag_values().get("state") == "active", timeout=90), log.read_text()[-3000:]
        camera = f"/large_frames_{os.getpid()}/camera/image_raw"
        for size in ("640x480", "1280x720"):
            received0, _ = counters(h)
            sent = publish(camera, photo, size, "raw", "best_effort")
            assert sent["published"] == COUNT and sent["matched"] >= 1, sent
            arrived = h.wait_for(lambda: counters(h)[0] >= received0 + COUNT, timeout=15)
            print(f"large-frames profile, best effort: {size} raw received {counters(h)[0] - received0}/{COUNT}")
            assert arrived, f"{size}: {counters(h)[0] - received0} of {COUNT} best-effort frames arrived"

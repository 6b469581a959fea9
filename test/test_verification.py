"""Loop-closure verification with the keyframes' stored features and camera models (issue 18), without ROS: the
Localizer with a FeatureVerifier over tiny real maps (KITTI 06 frames with the KITTI camera; RGB-D desk frames
with depth) gives the query camera's pose in the keyframe camera's frame, checked against the ground truth."""

import cv2
import numpy as np
import pytest

from geoloc_ros.geometry import benchmark as bench
from geoloc_ros.localization import SESSION_MAP_ID, Frame, Localizer, SessionMap, load_snapshot
from geoloc_ros.localization.verification import FeatureVerifier, build_verifier, diagnostics
from geoloc_ros.mapping import Keyframe
from geoloc_ros.mapping.builders import encode_into, new_map_for
from geoloc_ros.mapping.features import LocalFeatureStore
from geoloc_ros.model import save_encoder
from geoloc_ros.model.testing import tiny_encoder
from geoloc_ros.node import params

T0 = 1_700_000_000 * 10**9
# Margins over the figures docs/geometry.md reports for these pairs (rotation < 0.2 deg, direction < 1 deg,
# metric < 3 cm): wide enough for any CPU's RANSAC, narrow enough to catch a transform the wrong way round.
MAX_ROTATION_DEG, MAX_DIRECTION_DEG, MAX_METRIC_M = 1.0, 5.0, 0.10


def settings(**overrides):
    return params.localizer_config(params.settings(**{"device": "cpu", "consistency_k": 1, "top_k": 2,
                                                       "verification": True, **overrides}))


def build_map(path, encoder, images, camera, depths=None, features=True):
    """A map of `images` (label, HxWx3) with their local features and `camera` (depths: label -> depth image)."""
    db = new_map_for(encoder, "geometry")
    if features:
        db.local_features = LocalFeatureStore("sift")
    items = [(Keyframe(label=label, source="test"), image) for label, image in images]
    encode_into(db, encoder, items, progress=False, camera_for=lambda kf, im: camera,
                depth_for=lambda kf: (depths or {}).get(kf.label))
    db.save(path)
    return path


@pytest.fixture(scope="module")
def maps(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verification")
    enc = tiny_encoder()
    checkpoint = str(save_encoder(enc, tmp / "encoder"))
    kitti = shared_data / "geometry" / "kitti06"
    desk = shared_data / "geometry" / "rgbd_desk"
    k_images = [(n, bench.read_rgb(kitti / f"kitti06-{n}.png")) for n in ("12", "435")]
    d_images = [(str(n), bench.read_rgb(desk / "color" / f"{n}.png")) for n in (1, 3)]
    d_depth = {str(n): bench.read_depth(desk / "depth" / f"{n}.pgm") for n in (1, 3)}
    return {"encoder": checkpoint, "kitti_poses": bench.kitti_poses(kitti), "desk_poses": bench.rgbd_poses(desk),
            "kitti": str(build_map(tmp / "kitti", enc, k_images, bench.KITTI_CAMERA)),
            "kitti_bare": str(build_map(tmp / "bare", enc, k_images, bench.KITTI_CAMERA, features=False)),
            "desk": str(build_map(tmp / "desk", enc, d_images, bench.RGBD_CAMERA, d_depth)),
            "query_kitti": bench.read_rgb(kitti / "kitti06-13.png"),
            "query_desk": bench.read_rgb(desk / "color" / "2.png")}


def localizer(map_path, encoder, session=False, **overrides):
    s = settings(map_path=[map_path] if map_path else [""], encoder_path=encoder, session_map=session,
                 **overrides)
    snap = load_snapshot(s)
    sess = SessionMap(snap.encoder) if session else None
    return Localizer(snap, sess, build_verifier(s, snap, sess))


def frame(rgb, camera_model=None, depth=None, stamp_ns=T0):
    return Frame(camera="/cam", topic="/cam", stamp_ns=stamp_ns, frame_id="cam", rgb=rgb,
                 camera_model=camera_model, depth=depth)


def closure_of(result, label):
    return next(c for c in result.closures if c.keyframe.label == label)


def test_verified_kitti_closure_carries_the_query_pose_in_the_keyframe_frame(maps):
    cv2.setRNGSeed(0)
    r = localizer(maps["kitti"], maps["encoder"]).process([frame(maps["query_kitti"], bench.KITTI_CAMERA)])[0]
    assert [c.keyframe.label for c in r.closures] == ["12"]  # 435 (another street) fails verification
    c = closure_of(r, "12")
    assert c.verified and c.inliers >= 100 and c.relative_pose_kind == "direction"
    poses = maps["kitti_poses"]
    e = bench.errors(c.relative_pose.T_ab, np.linalg.inv(poses["12"]) @ poses["13"])  # query (13) in keyframe 12
    assert e["rotation_deg"] <= MAX_ROTATION_DEG and e["direction_deg"] <= MAX_DIRECTION_DEG, e
    cov = c.relative_pose.covariance
    assert cov[0, 0] >= 1e5 and 0 < cov[5, 5] < 1e-3  # translation scale unknown, rotation well known


def test_keyframe_depth_gives_a_metric_pose(maps):
    cv2.setRNGSeed(0)
    loc = localizer(maps["desk"], maps["encoder"], verification_require_pose="metric")
    r = loc.process([frame(maps["query_desk"], bench.RGBD_CAMERA)])[0]
    assert r.closures and all(c.relative_pose_kind == "metric" for c in r.closures)
    poses = maps["desk_poses"]
    for c in r.closures:
        n = int(c.keyframe.label)
        e = bench.errors(c.relative_pose.T_ab, np.linalg.inv(poses[n]) @ poses[2])
        assert e["translation_m"] <= MAX_METRIC_M and e["rotation_deg"] <= MAX_ROTATION_DEG, (n, e)
    assert diagnostics(loc.verifier)["verification_pose_metric"] == len(r.closures)


def test_unknown_query_camera_verifies_without_a_pose(maps):
    """No CameraInfo yet: inliers of a fundamental matrix decide; no relative pose; a required pose refuses."""
    plain = localizer(maps["kitti"], maps["encoder"]).process([frame(maps["query_kitti"])])[0]
    c = closure_of(plain, "12")
    assert c.verified and c.inliers >= 50 and c.relative_pose is None and c.relative_pose_kind == "none"
    strict = localizer(maps["kitti"], maps["encoder"], verification_require_pose="direction")
    assert not strict.process([frame(maps["query_kitti"])])[0].closures
    assert diagnostics(strict.verifier)["verification_no_query_camera"] >= 1


def test_map_without_features_is_said_and_closes_nothing(maps):
    loc = localizer(maps["kitti_bare"], maps["encoder"])
    r = loc.process([frame(maps["query_kitti"], bench.KITTI_CAMERA)])[0]
    assert r.candidates and not r.closures
    problems = diagnostics(loc.verifier)["verification_problems"]
    assert "stores no local features" in problems and "--local-features" in problems


def test_session_keyframes_keep_features_camera_and_depth(maps, shared_data):
    """A session keyframe added with depth verifies a later frame metrically against it."""
    desk = shared_data / "geometry" / "rgbd_desk"
    loc = localizer("", maps["encoder"], session=True, session_exclusion_window_s=1.0,
                    verification_require_pose="metric")
    first = frame(bench.read_rgb(desk / "color" / "1.png"), bench.RGBD_CAMERA, bench.read_depth(desk / "depth" /
                                                                                                  "1.pgm"))
    kid = loc.process([first])[0].session_keyframe
    features, camera = loc.session.features.get(kid)
    assert features.has_depth and camera == bench.RGBD_CAMERA
    cv2.setRNGSeed(0)
    r = loc.process([frame(maps["query_desk"], bench.RGBD_CAMERA, stamp_ns=T0 + 5 * 10**9)])[0]
    c = r.closures[0]
    assert c.map_id == SESSION_MAP_ID and c.relative_pose_kind == "metric"
    poses = maps["desk_poses"]
    assert bench.errors(c.relative_pose.T_ab, np.linalg.inv(poses[1]) @ poses[2])["translation_m"] <= MAX_METRIC_M


def test_reload_keeps_counters_and_session_features(maps):
    loc = localizer(maps["kitti"], maps["encoder"])
    again = loc.verifier.with_maps(loc.snapshot.maps)
    assert again.counts is loc.verifier.counts and again.session_features is loc.verifier.session_features
    with pytest.raises(ValueError, match="verification_require_pose"):
        FeatureVerifier(require_pose="exact")


def test_docs_between_factor_matches_sampled_relative_poses():
    """docs/node.md's GTSAM snippet turns a PlaceCandidate into a between-factor on base poses: its covariance,
    pushed through T_bc and GTSAM's tangent order, agrees with relative poses sampled from the message's."""
    from pathlib import Path
    import re

    gtsam = pytest.importorskip("gtsam")
    from scipy.spatial.transform import Rotation

    from geoloc_msgs.msg import PlaceCandidate

    doc = (Path(__file__).resolve().parents[1] / "docs" / "node.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "def loop_closure_factor" in b)
    scope = {}
    exec(snippet, scope)  # noqa: S102 - the documented code itself is what is tested
    T_kq = np.eye(4)
    T_kq[:3, :3] = Rotation.from_euler("xyz", [0.01, 0.2, 0.03]).as_matrix()
    T_kq[:3, 3] = [0.3, 0.1, 1.0]
    c = PlaceCandidate(relative_pose_kind=PlaceCandidate.RELATIVE_POSE_METRIC)
    p = c.relative_pose.pose
    p.position.x, p.position.y, p.position.z = T_kq[:3, 3]
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = Rotation.from_matrix(T_kq[:3, :3]).as_quat()
    cov_ros = np.diag([1e-4, 2e-4, 3e-4, 1e-6, 2e-6, 3e-6])
    c.relative_pose.covariance = list(cov_ros.reshape(-1))
    T_bc = np.eye(4)  # base_link (x forward, y left, z up) <- camera optical (z forward, x right, y down)
    T_bc[:3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
    T_bc[:3, 3] = [0.5, 0.0, 1.2]
    relative, cov = scope["between_base_poses"](c, T_bc)
    assert np.allclose(relative.matrix(), T_bc @ T_kq @ np.linalg.inv(T_bc))
    rng = np.random.default_rng(0)
    samples = []
    for d in rng.multivariate_normal(np.zeros(6), cov_ros, size=3000):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_rotvec(d[3:]).as_matrix() @ T_kq[:3, :3]  # ROS: perturbation in the parent axes
        T[:3, 3] = T_kq[:3, 3] + d[:3]
        samples.append(gtsam.Pose3.Logmap(relative.between(gtsam.Pose3(T_bc @ T @ np.linalg.inv(T_bc)))))
    sampled = np.cov(np.array(samples).T)
    assert np.allclose(np.diag(cov), np.diag(sampled), rtol=0.2)
    factor = scope["loop_closure_factor"](c, gtsam.symbol("x", 1), gtsam.symbol("x", 2), T_bc)
    assert factor.keys() == [gtsam.symbol("x", 1), gtsam.symbol("x", 2)]

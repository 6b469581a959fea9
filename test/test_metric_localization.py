"""Maps with 3D structure and metric localization against them, on the shared real frames: an RGB-D map (depth
lifted into the map frame) and a KITTI map triangulated from known poses, both built and queried through the CLI
(`geoloc map build --poses`, `geoloc map localize`); a scene the map does not show falls back to the place
estimate; corrupted structure files are refused at load."""

import contextlib
import io
import json

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from geoloc_ros.cli import main as geoloc
from geoloc_ros.geometry import benchmark as bench
from geoloc_ros.geometry.georegister import fit_similarity
from geoloc_ros.localization.metric import MetricLocalizer
from geoloc_ros.mapping import MapDatabase, MapError, storage
from geoloc_ros.mapping.posed import read_poses_csv
from geoloc_ros.mapping.structure import STRUCTURE

RGBD_CAMERA = "518,519,325.5,253.5"
KITTI_CAMERA = "707.0912,707.0912,601.8873,183.1104"


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    from geoloc_ros.model import save_encoder
    from geoloc_ros.model.testing import tiny_encoder

    return save_encoder(tiny_encoder(), tmp_path_factory.mktemp("enc"))


def poses_csv(path, poses: dict) -> str:
    rows = ["image,tx,ty,tz,qx,qy,qz,qw"]
    for name, T in poses.items():
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        rows.append(",".join([name, *(repr(float(v)) for v in T[:3, 3]), *(repr(float(v)) for v in q)]))
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def run(*args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        geoloc(list(args))
    return out.getvalue()


@pytest.fixture(scope="module")
def rgbd_map(tmp_path_factory, shared_data, encoder_file):
    """The desk map of frames 1, 3, 5 with depth: (map dir, ground-truth poses, colour folder)."""
    tmp = tmp_path_factory.mktemp("rgbd")
    folder = shared_data / "geometry" / "rgbd_desk"
    poses = bench.rgbd_poses(folder)
    csv = poses_csv(tmp / "poses.csv", {f"{n}.png": poses[n] for n in (1, 3, 5)})
    run("map", "build", "--encoder", str(encoder_file), "--images", str(folder / "color"), "--poses", csv,
        "--depth", str(folder / "depth"), "--camera", RGBD_CAMERA, "--out", str(tmp / "map"), "--quiet",
        "--device", "cpu")
    return tmp / "map", poses, folder / "color"


def test_depth_map_format_and_cli_localize(rgbd_map):
    out, poses, color = rgbd_map
    db = MapDatabase.load(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["structure"]["source"] == "depth" and manifest["structure"]["keyframes"] == 3
    assert STRUCTURE in manifest["files"] and len(db.structure) == 3 and db.structure.point_count() > 500
    for kid in db.column("id"):
        k = db.keyframe(kid)
        T = poses[int(k.label.split(".")[0])]
        assert np.allclose(db.structure.pose(kid), T, atol=1e-6)  # the keyframe's full 6-DoF camera pose
        assert np.allclose([k.x, k.y, k.z], T[:3, 3], atol=1e-6)
        features, _ = db.local_features.get(kid)
        assert db.structure.points(kid).shape == (len(features), 3)
    lines = run("map", "localize", str(out), str(color / "2.png"), str(color / "4.png"), "--camera", RGBD_CAMERA,
                "--json", "--device", "cpu").splitlines()
    assert len(lines) == 2
    for line, n in zip(lines, (2, 4)):
        rec = json.loads(line)
        assert set(rec) == {"image", "kind", "inliers", "t", "q_xyzw"}
        assert rec["kind"] == "metric" and rec["inliers"] >= 30 and rec["image"].endswith(f"{n}.png")
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rotation.from_quat(rec["q_xyzw"]).as_matrix(), rec["t"]
        err = bench.errors(T, poses[n])
        assert err["translation_m"] <= 0.05 and err["rotation_deg"] <= 2.0, (n, err)  # the bounds
    text = run("map", "localize", str(out), str(color / "4.png"), "--camera", RGBD_CAMERA, "--device", "cpu")
    assert "kind metric" in text and "q_xyzw" in text


def test_unrelated_scene_falls_back_to_the_place_estimate(rgbd_map, shared_data):
    out, poses, _ = rgbd_map
    db = MapDatabase.load(out)
    loc = MetricLocalizer(db)
    street = bench.read_rgb(sorted((shared_data / "toy_streets" / "database").glob("*.jpg"))[0])
    result = loc.localize(street, bench.RGBD_CAMERA, list(db.column("id")))
    assert result.kind == "place"
    assert np.allclose(result.T_map_camera, db.structure.pose(result.keyframe_id))  # a keyframe, not a wild pose
    assert loc.localize(street, bench.RGBD_CAMERA, []).kind == "none"
    # a stricter threshold turns a good match into the place estimate too
    strict = MetricLocalizer(db, min_inliers=10_000)
    assert strict.localize(bench.read_rgb(rgbd_map[2] / "2.png"), bench.RGBD_CAMERA, [0, 1, 2]).kind == "place"


def test_unreadable_query_is_reported_and_the_others_still_answered(rgbd_map, tmp_path, capsys):
    out, _, color = rgbd_map
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit) as exit_:
        geoloc(["map", "localize", str(out), str(bad), str(color / "2.png"), "--camera", RGBD_CAMERA, "--json",
                "--device", "cpu"])
    assert exit_.value.code == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["kind"] for r in records] == ["none", "metric"] and records[0]["t"] is None


def test_kitti_map_triangulated_from_known_poses(tmp_path, shared_data, encoder_file):
    folder = shared_data / "geometry" / "kitti06"
    poses = bench.kitti_poses(folder)
    csv = poses_csv(tmp_path / "poses.csv", {f"kitti06-{n}-color.png": poses[n] for n in ("12", "13")})
    run("map", "build", "--encoder", str(encoder_file), "--images", str(folder), "--poses", csv, "--camera",
        KITTI_CAMERA, "--out", str(tmp_path / "map"), "--quiet", "--device", "cpu")
    db = MapDatabase.load(tmp_path / "map")
    assert db.structure.source == "triangulation" and db.structure.point_count() > 100
    rec = json.loads(run("map", "localize", str(tmp_path / "map"), str(folder / "kitti06-14-color.png"),
                         "--camera", KITTI_CAMERA, "--json", "--device", "cpu"))
    assert rec["kind"] == "metric"
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_quat(rec["q_xyzw"]).as_matrix(), rec["t"]
    err = bench.errors(T, poses["14"])
    assert err["translation_m"] <= 0.5 and err["rotation_deg"] <= 1.0, err


def _rewrite(folder, name, arrays):
    """Replace a map file and redo the manifest's checksums (an altered file that passes the checksums)."""
    with open(folder / name, "wb") as f:
        np.savez(f, **arrays)
    manifest = storage.read_manifest(folder)
    manifest["files"] = storage.describe_files(folder)
    (folder / storage.MANIFEST).write_bytes(storage.manifest_bytes(manifest))


def _structure_arrays(folder):
    with np.load(folder / STRUCTURE) as z:
        return {k: z[k].copy() for k in z.files}


@pytest.mark.parametrize("corrupt", ["nan_pose", "quaternion", "half_nan_point", "huge_point", "short_points",
                                     "unknown_id"])
def test_corrupted_structure_is_refused_at_load(rgbd_map, tmp_path, corrupt):
    import shutil

    folder = tmp_path / "map"
    shutil.copytree(rgbd_map[0], folder)
    a = _structure_arrays(folder)
    row = int(np.flatnonzero(np.isfinite(a["points"][:, 0]))[0])
    if corrupt == "nan_pose":
        a["poses"][1, 0] = np.nan
    elif corrupt == "quaternion":
        a["poses"][0, 3:] = [0.5, 0.5, 0.5, 0.9]
    elif corrupt == "half_nan_point":
        a["points"][row, 1] = np.nan
    elif corrupt == "huge_point":
        a["points"][row] = 1e30
    elif corrupt == "short_points":
        a["points"], a["offsets"] = a["points"][:-5], np.minimum(a["offsets"], len(a["points"]) - 5)
    else:
        a["ids"][0] = 999
    _rewrite(folder, STRUCTURE, a)
    with pytest.raises(MapError, match="structure.npz"):
        MapDatabase.load(folder)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=7, max_size=7),
       st.integers(0, 2))
def test_any_pose_row_loads_checked_or_is_refused(rgbd_map, tmp_path_factory, values, which):
    import shutil

    folder = tmp_path_factory.mktemp("fuzz") / "map"
    shutil.copytree(rgbd_map[0], folder)
    a = _structure_arrays(folder)
    a["poses"][which] = values
    _rewrite(folder, STRUCTURE, a)
    try:
        db = MapDatabase.load(folder)
    except MapError:
        return
    T = db.structure.pose(int(a["ids"][which]))
    assert np.isfinite(T).all() and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-2)


def test_old_maps_load_without_structure(tmp_path, shared_data, encoder_file):
    db = MapDatabase.load(run("map", "build", "--encoder", str(encoder_file), "--images",
                              str(shared_data / "toy_streets" / "database"), "--sequence-spacing", "5", "--range",
                              "0:2", "--out", str(tmp_path / "plain"), "--quiet", "--device", "cpu")
                          .split(":")[0])
    assert db.structure is None and "structure" not in db.manifest()
    loc = MetricLocalizer(db)
    result = loc.localize(np.zeros((48, 64), np.uint8), bench.RGBD_CAMERA, [1])
    assert result.kind == "place" and np.allclose(result.T_map_camera[:3, 3], [0.0, 5.0, 0.0], atol=1e-6)


CSV_TOKENS = list("image,txyzqw0123456789.-e\n") + ["nan", "1.png", "inf", "image,tx,ty,tz,qx,qy,qz,qw\n",
                                                   "1.png,0,0,0,0,0,0,1"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(CSV_TOKENS), max_size=60).map("".join))
def test_poses_csv_reader_refuses_bad_text_with_maperror(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("csv")
    (folder / "1.png").write_bytes(b"x")
    (folder / "poses.csv").write_text(text)
    try:
        posed = read_poses_csv(folder / "poses.csv", folder)
    except MapError:
        return
    for p in posed:
        assert np.isfinite(p.T_map_camera).all()


def test_poses_csv_with_intrinsics_and_bad_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    csv = tmp_path / "p.csv"
    csv.write_text("image,tx,ty,tz,qx,qy,qz,qw,fx,fy,cx,cy,k1,k2,p1,p2\na.png,1,2,3,0,0,0,1,500,501,320,240,0.1,0,0,0\n")
    (p,) = read_poses_csv(csv, tmp_path)
    assert p.camera.fx == 500 and p.camera.distortion == (0.1, 0.0, 0.0, 0.0) and p.T_map_camera[2, 3] == 3
    for bad in ("a.png,1,2,3,0,0,0,2", "a.png,1,2,nan,0,0,0,1", "b.png,1,2,3,0,0,0,1", "a.png,x,2,3,0,0,0,1"):
        csv.write_text("image,tx,ty,tz,qx,qy,qz,qw\n" + bad + "\n")
        with pytest.raises(MapError, match="p.csv"):
            read_poses_csv(csv, tmp_path)


def test_similarity_fit_recovers_a_known_transform_and_levels_a_line():
    rng = np.random.default_rng(0)
    R = Rotation.from_euler("zyx", [40, 10, -5], degrees=True).as_matrix()
    src = rng.normal(size=(10, 3)) * [20, 5, 2]
    sim = fit_similarity(src, 2.5 * src @ R.T + [100, -50, 3])
    assert sim.scale == pytest.approx(2.5) and np.allclose(sim.R, R, atol=1e-9) and sim.rms_m < 1e-9
    # cameras on a line (x axis of the model), upright (optical -y = model +z), facing +y: the fit levels them
    line = np.column_stack([np.arange(10.0), np.zeros(10), np.zeros(10)])
    cam = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # optical x = model x, y = -z, z = +y
    sim = fit_similarity(line, line @ Rotation.from_euler("z", 30, degrees=True).as_matrix().T * 2,
                         [cam] * 10)
    up = sim.R @ cam @ [0, -1, 0]
    assert up[2] > 0.999 and sim.scale == pytest.approx(2.0)


def test_colmap_model_import(tmp_path, shared_data, encoder_file):
    """A COLMAP model (text, written with pycolmap) of the desk frames 1, 3, 5 at their ground-truth poses: the
    map keeps the model's frame (no GPS in these frames) and its triangulated structure localizes frame 4."""
    import pycolmap

    folder = shared_data / "geometry" / "rgbd_desk"
    poses = bench.rgbd_poses(folder)
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=640, height=480,
                                                    params=[518, 519, 325.5, 253.5], camera_id=1))
    for n in (1, 3, 5):
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{n}.png", camera_id=1, image_id=n),
                                         pycolmap.Rigid3d(np.linalg.inv(poses[n])[:3, :]))
    (tmp_path / "model").mkdir()
    rec.write_text(tmp_path / "model")
    run("map", "build", "--encoder", str(encoder_file), "--images", str(folder / "color"), "--colmap",
        str(tmp_path / "model"), "--out", str(tmp_path / "map"), "--quiet", "--device", "cpu")
    db = MapDatabase.load(tmp_path / "map")
    assert db.structure.source == "colmap" and not db.structure.georegistered and len(db.structure) == 3
    rec4 = json.loads(run("map", "localize", str(tmp_path / "map"), str(folder / "color" / "4.png"), "--camera",
                          RGBD_CAMERA, "--json", "--device", "cpu"))
    assert rec4["kind"] == "metric"
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = Rotation.from_quat(rec4["q_xyzw"]).as_matrix(), rec4["t"]
    err = bench.errors(T, poses[4])
    assert err["translation_m"] <= 0.05 and err["rotation_deg"] <= 2.0, err
    with pytest.raises(SystemExit, match="no such COLMAP model"):
        run("map", "build", "--encoder", str(encoder_file), "--images", str(folder / "color"), "--colmap",
            str(tmp_path / "absent"), "--out", str(tmp_path / "map2"), "--quiet", "--device", "cpu")
    with pytest.raises(SystemExit, match="one of --poses, --sfm and --colmap"):
        run("map", "build", "--encoder", str(encoder_file), "--images", str(folder / "color"), "--colmap",
            str(tmp_path / "model"), "--sfm", "--out", str(tmp_path / "map3"), "--quiet", "--device", "cpu")


def test_metric_publisher_newest_wins_and_falls_back(rgbd_map, shared_data):
    """The node's metric thread on the desk map: while one frame is being published, of two more submitted the
    older is replaced (counted) and the newest localized; a frame of another scene publishes the fused pose."""
    import threading

    from geoloc_ros.localization.frames import Candidate, Frame, FrameResult, Pose
    from geoloc_ros.localization.metric_worker import MetricPublisher
    from geoloc_ros.localization.snapshot import MapEntry, Snapshot
    from geoloc_ros.node import params

    out, poses, color = rgbd_map
    db = MapDatabase.load(out)
    entry = MapEntry(str(out), db, db.descriptors, db.column("id"))
    settings = params.Settings(**params.defaults())
    snapshot = Snapshot(None, (entry,), settings, "")
    published, first_out, release = [], threading.Event(), threading.Event()

    def publish(result, pose):
        published.append((result.frame.stamp_ns, pose))
        first_out.set()
        release.wait(timeout=30)

    def result(stamp, image):
        frame = Frame("/camera", "/camera", stamp, "camera", image, camera_model=bench.RGBD_CAMERA)
        cands = [Candidate(entry.id, db.name, db.keyframe(int(k)), 0.9 - 0.1 * i)
                 for i, k in enumerate(db.column("id"))]
        fused = Pose(0.0, 0.0, 0.0, (0.0, 0.0, 0.0, 1.0), [25.0 if i % 7 == 0 else 0.0 for i in range(36)])
        return FrameResult(frame, cands, cands[:1], fused)

    worker = MetricPublisher(settings, publish)
    try:
        desk2, desk4 = (bench.read_rgb(color / f"{n}.png") for n in (2, 4))
        assert worker.wants(result(1, desk2), snapshot)
        worker.submit(result(1, desk2), snapshot)
        assert first_out.wait(timeout=60)
        worker.submit(result(2, desk4), snapshot)
        worker.submit(result(3, desk4), snapshot)  # replaces frame 2 while frame 1 is still being published
        release.set()
        street = bench.read_rgb(sorted((shared_data / "toy_streets" / "database").glob("*.jpg"))[0])
        for _ in range(600):
            if len(published) == 2:
                break
            threading.Event().wait(0.1)
        worker.submit(result(4, street), snapshot)
        for _ in range(600):
            if len(published) == 3:
                break
            threading.Event().wait(0.1)
    finally:
        release.set()
        worker.stop()
    assert [s for s, _ in published] == [1, 3, 4]
    assert worker.counts["metric_superseded"] == 1 and worker.counts["metric_poses"] == 2
    assert worker.counts["metric_fallbacks"] == 1 and published[2][1].covariance[0] == 25.0  # the fused pose
    assert published[1][1].covariance[0] < 0.01  # metric: the refinement's covariance

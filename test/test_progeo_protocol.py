"""The VG benchmark's evaluation protocol (`geoloc eval --protocol vg`), readers for VG folders, raw MSLS sides and
EXIF-geotagged photos, and `geoloc model convert`."""

import json

import numpy as np
import pytest

from geoloc_ros.cli import main


def _vg_name(east, north, tag):
    return f"@{east:.2f}@{north:.2f}@33@U@55.7@13.2@{tag}@@@@@@@.png"


def _write_vg_dataset(root, rng):
    """Database A (0 m), B (100 m), C (200 m) east of a UTM origin; each query is a copy of a database image, so
    its nearest descriptor is that image whatever the network: the retrieval is known by construction.
    Q1 = A's image at exactly 25 m from A; Q2 = B's at 10 m from B; Q3 = C's at 300 m from C (no positive at
    all); Q4 = A's image at 5 m from C (its positive C is not the nearest descriptor)."""
    import cv2

    e0, n0 = 386000.0, 6173000.0
    db = {name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for name in "ABC"}
    (root / "database").mkdir(parents=True)
    (root / "queries").mkdir()
    for name, east in zip("ABC", (0.0, 100.0, 200.0)):
        cv2.imwrite(str(root / "database" / _vg_name(e0 + east, n0, name)), db[name])
    for name, (src, east, north) in {"Q1": ("A", 25.0, 0.0), "Q2": ("B", 100.0, 10.0), "Q3": ("C", 500.0, 0.0),
                                     "Q4": ("A", 200.0, 5.0)}.items():
        cv2.imwrite(str(root / "queries" / _vg_name(e0 + east, n0 + north, name)), db[src])


def test_vg_protocol_matches_a_hand_count(tmp_path):
    from geoloc_ros.model import save_encoder
    from geoloc_ros.model.encoder import build_encoder

    _write_vg_dataset(tmp_path / "ds", np.random.default_rng(0))
    enc = save_encoder(build_encoder(arch="RN-pico", device="cpu"), tmp_path / "enc")
    out = {}
    for protocol, resize in (("vg", "native"), ("ours", "stretch")):
        out[protocol] = tmp_path / f"{protocol}.json"
        assert main(["eval", "--encoder", str(enc), "--dataset", str(tmp_path / "ds"), "--protocol", protocol,
                     "--resize", resize, "--ns", "1", "3", "--json", str(out[protocol])]) == 0
    vg = next(iter(json.loads(out["vg"].read_text())["protocols"]["<= 25 m"].values()))
    # Hand count, VG: positives <= 25 m -> Q1 {A}, Q2 {B}, Q3 {}, Q4 {C}; all 4 queries count.
    # Top-1 = the copied image: Q1 A hit, Q2 B hit, Q3 miss (no positive), Q4 A miss -> 2/4. Top-3 = all: 3/4.
    assert vg["queries"] == 4 and vg["queries_without_positives"] == 1
    assert vg["R@1"] == pytest.approx(50.0) and vg["R@3"] == pytest.approx(75.0)
    ours = next(iter(json.loads(out["ours"].read_text())["protocols"]["25 m"].values()))
    # Ours: positives < 25 m -> Q1 has none (exactly 25 m), nor Q3: 2 queries count, Q2 hit, Q4 miss at top-1.
    assert ours["queries"] == 2 and ours["queries_without_positives"] == 2
    assert ours["R@1"] == pytest.approx(50.0) and ours["R@3"] == pytest.approx(100.0)


def test_radius_boundary_and_raw_vit_descriptors():
    from geoloc_ros.model.encoder import build_encoder
    from geoloc_ros.model.evaluation import positives_by_radius

    db, q = [(500000.0, 4e6), (500030.0, 4e6)], [(500025.0, 4e6), (500000.0, 4e6 - 25.000001)]
    assert [p.tolist() for p in positives_by_radius(db, q, 25.0, inclusive=True)] == [[0, 1], []]
    assert [p.tolist() for p in positives_by_radius(db, q, 25.0)] == [[1], []]
    enc = build_encoder(arch="ViT-nano", device="cpu")
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    raw, unit = enc.encode(images, raw=True), enc.encode(images)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # ProGEO's ViT output: the projected token as is
    assert np.allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, atol=1e-5)
    with pytest.raises(ValueError, match="native-size input needs a ResNet"):
        enc.encode(images, native_size=True)


def test_msls_raw_city_side(tmp_path):
    import cv2

    from geoloc_ros.datasets import load_dataset

    side = tmp_path / "train_val" / "lund" / "query"
    (side / "images").mkdir(parents=True)
    rows = [("k1", 13.19, 55.70, 90.0), ("k2", 13.20, 55.71, "")]
    for key, *_ in rows:
        cv2.imwrite(str(side / "images" / f"{key}.jpg"), np.zeros((8, 8, 3), np.uint8))
    (side / "raw.csv").write_text(",key,lon,lat,ca,captured_at,pano\n"
                                  + "".join(f"{i},{k},{lon},{lat},{ca},1500000000000,False\n"
                                            for i, (k, lon, lat, ca) in enumerate(rows)))
    recs = load_dataset(side)
    assert [r.label for r in recs] == ["images/k1.jpg", "images/k2.jpg"] and all(r.path.is_file() for r in recs)
    assert (recs[0].lat, recs[0].lon, recs[0].heading) == (55.70, 13.19, 90.0) and np.isnan(recs[1].heading)
    assert recs[0].utm_zone == "33U"


def test_exif_gps_folder(shared_data):
    from geoloc_ros.datasets import load_dataset

    lund = load_dataset(shared_data / "geometry" / "lund_street")
    assert len(lund) == 29 and lund[0].label == "01.jpg"
    assert 55.69 < lund[0].lat < 55.71 and 13.18 < lund[0].lon < 13.21 and lund[0].utm_zone == "33U"
    xy = np.array([(r.utm_east, r.utm_north) for r in lund])
    assert 100.0 < np.linalg.norm(xy[-1] - xy[0]) < 300.0  # the README's ~180 m walk


def test_model_convert(tmp_path, capsys):
    from geoloc_ros.model import load_encoder, read_header
    from geoloc_ros.model.testing import write_progeo_checkpoint

    pth = tmp_path / "progeo.pth"
    write_progeo_checkpoint(pth, arch="RN-pico", dim=96)
    out = tmp_path / "progeo.safetensors"
    assert main(["model", "convert", str(pth), str(out)]) == 0
    header = read_header(out)
    assert header["fingerprint"] in capsys.readouterr().out
    images = [np.random.default_rng(i).integers(0, 256, (40, 50, 3), dtype=np.uint8) for i in range(2)]
    converted, original = load_encoder(out, device="cpu"), load_encoder(pth, device="cpu")
    assert np.array_equal(converted.encode(images), original.encode(images))
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        main(["model", "convert", str(pth), str(out)])
    with pytest.raises(SystemExit, match="architecture mismatch"):
        main(["model", "convert", str(pth), str(tmp_path / "other.safetensors"), "--arch", "RN50"])
    assert out.read_bytes() == before and not (tmp_path / "other.safetensors").exists()

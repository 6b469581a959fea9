"""Places in words, ROS-free (docs/language.md): address/caption text in maps (CSV columns, a bag's String topic,
an address table), text queries (FTS5 and a CLIP text tower), Img2Loc-style geolocation against a local
chat-completions test server (loopback only; no model runs here: the server answers what the test tells it)."""

from __future__ import annotations

import json
import math

from language_fixtures import ADDRESSES, CAPTIONS, address_csv, chat_server
import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.datasets import read_image, read_sequence
from geoloc_ros.language import annotate
from geoloc_ros.language.geolocate import GeolocateSettings, Geolocator, parse_coordinates, retrieval_estimate, retrieve
from geoloc_ros.language.lmm_client import LmmClient
from geoloc_ros.language.text_search import TextSearch, text_search_for
from geoloc_ros.mapping import MapDatabase
from geoloc_ros.model import save_encoder
from geoloc_ros.model.testing import BUNDLED_MAP_DIR, tiny_encoder


@pytest.fixture(scope="module")
def text_map(shared_data, tmp_path_factory):
    """`geoloc map build` from a CSV with address and caption columns: (records, map dir, encoder dir)."""
    tmp = tmp_path_factory.mktemp("text_map")
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    enc_dir = tmp / "enc"
    save_encoder(tiny_encoder(), enc_dir)
    csv_path = address_csv(shared_data, records, tmp / "images.csv")
    assert geoloc(["map", "build", "--encoder", str(enc_dir), "--images", str(csv_path), "--out", str(tmp / "map"),
                   "--quiet", "--local-features", "none"]) == 0
    return records, tmp / "map", enc_dir


def test_map_built_from_csv_keeps_address_and_caption(text_map):
    _, map_dir, _ = text_map
    db = MapDatabase.load(map_dir)
    assert list(db.column("address")) == ADDRESSES
    assert list(db.column("caption")) == CAPTIONS
    assert db.keyframe(2).address == "3 Harbour Road"


def test_old_map_without_text_columns_still_loads():
    db = MapDatabase.load(BUNDLED_MAP_DIR)  # written before keyframes had address / caption
    assert len(db) > 0 and set(db.column("address")) == {""} and db.keyframe(0).caption == ""


def test_map_query_text_falls_back_to_fts5_and_says_so(text_map, capsys):
    _, map_dir, _ = text_map
    assert geoloc(["map", "query", str(map_dir), "--text", "harbour quay", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method: fts5") and "no CLIP text tower" in out
    first = out.splitlines()[1]
    assert "'3 Harbour Road'" in first and "lat 45.00" in first


def test_fts5_ranks_the_matching_address_first_and_refuses_empty_text(text_map):
    _, map_dir, _ = text_map
    db = MapDatabase.load(map_dir)
    search = TextSearch([("m", db.name, db)])
    answer = search.find("castle gate", 2)
    assert answer.method == "fts5" and answer.places[0].keyframe.address == "1 Castle Hill"
    assert 0.0 <= answer.places[0].similarity < 1.0
    assert not search.find("   ").success
    assert search.find("volcano").places == []


def test_clip_text_tower_is_used_when_the_encoder_carries_one(shared_data, tmp_path):
    import torch

    from geoloc_ros.language.text_tower import save_text_tower
    from geoloc_ros.model.network import build_clip

    enc = tiny_encoder()
    enc_dir = tmp_path / "enc"
    save_encoder(enc, enc_dir)
    torch.manual_seed(0)
    clip = build_clip(enc.arch)  # random weights: this checks the path, not what a trained tower finds
    projection = torch.nn.Linear(enc.arch["embed_dim"], enc.dim)
    save_text_tower(clip, enc_dir, enc, projection)
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    csv_path = address_csv(shared_data, records, tmp_path / "images.csv")
    assert geoloc(["map", "build", "--encoder", str(enc_dir), "--images", str(csv_path), "--out",
                   str(tmp_path / "map"), "--quiet", "--local-features", "none"]) == 0
    assert (tmp_path / "map" / "text_tower.safetensors").is_file()  # carried, and checksummed in the manifest
    db = MapDatabase.load(tmp_path / "map")
    loaded = tiny_encoder()  # same weights as `enc`; the tower is found beside the map's encoder
    loaded.metadata["checkpoint"] = str(db.encoder_path)
    answer = text_search_for([("m", db.name, db)], loaded).find("a church", 3)
    assert answer.method == "clip_text" and len(answer.places) == 3
    q = torch.nn.functional.normalize(projection(clip.encode_text(__import__("open_clip").tokenize(
        ["a church"], context_length=enc.arch["text_cfg"]["context_length"]))), dim=-1).detach().numpy()
    expected = np.argsort(-(db.descriptors @ q[0]))[:3]
    assert [c.keyframe.id for c in answer.places] == [int(db.column("id")[r]) for r in expected]
    other = tiny_encoder(seed=1)
    other.metadata["checkpoint"] = str(db.encoder_path)
    refused = text_search_for([("m", db.name, db)], other).find("a church")
    assert refused.method == "fts5" and "belongs to encoder" in refused.message


def test_address_table_polygon_then_nearest_point(tmp_path):
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"address": "Town Hall, 1 Main Square"},
         "geometry": {"type": "Polygon", "coordinates": [[[7.0, 45.0], [7.001, 45.0], [7.001, 45.001],
                                                          [7.0, 45.001], [7.0, 45.0]]]}},
        {"type": "Feature", "properties": {"address": "2 Mill Lane"},
         "geometry": {"type": "Point", "coordinates": [7.01, 45.01]}}]}
    (tmp_path / "a.geojson").write_text(json.dumps(doc))
    table = annotate.read_address_table(tmp_path / "a.geojson", radius_m=30.0)
    assert table.lookup(45.0005, 7.0005) == "Town Hall, 1 Main Square"
    assert table.lookup(45.01015, 7.01) == "2 Mill Lane"  # ~17 m away
    assert table.lookup(45.0105, 7.01) == ""  # ~56 m away
    (tmp_path / "p.csv").write_text("lat,lon,address\n45.01,7.01,2 Mill Lane\n")
    assert annotate.read_address_table(tmp_path / "p.csv").lookup(45.01015, 7.01) == "2 Mill Lane"
    (tmp_path / "bad.geojson").write_text('{"features": [{"geometry": {"type": "Point"}}]}')
    with pytest.raises(annotate.AnnotationError, match="feature 0"):
        annotate.read_address_table(tmp_path / "bad.geojson")


def test_bag_string_topic_gives_the_nearest_message(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    from geoloc_ros.mapping import Keyframe

    ts = get_typestore(Stores.ROS2_HUMBLE)
    String = ts.types["std_msgs/msg/String"]
    with Writer(tmp_path / "bag", version=9) as w:
        conn = w.add_connection("/address", String.__msgtype__, typestore=ts)
        for t, text in ((10**9, "Market Street"), (5 * 10**9, "Harbour Road")):
            w.write(conn, t, ts.serialize_cdr(String(data=text), String.__msgtype__))
    messages = annotate.bag_strings(tmp_path / "bag", "/address")
    assert messages == [(10**9, "Market Street"), (5 * 10**9, "Harbour Road")]
    near = annotate.nearest_stamp_annotator(messages, "address", max_gap_s=2.0)
    assert near(Keyframe(stamp_ns=2 * 10**9)).address == "Market Street"
    assert near(Keyframe(stamp_ns=4 * 10**9)).address == "Harbour Road"
    assert near(Keyframe(stamp_ns=9 * 10**9)).address == ""  # 4 s from the nearest
    with pytest.raises(annotate.AnnotationError, match="no topic"):
        annotate.bag_strings(tmp_path / "bag", "/nope")


# -- geolocation ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def located(text_map):
    records, map_dir, enc_dir = text_map
    from geoloc_ros.model import load_encoder

    db = MapDatabase.load(map_dir)
    enc = load_encoder(enc_dir, device="cpu")
    return enc, [("m", db.name, db)], read_image(records[3].path), records


def test_retrieval_estimate_weights_neighbours_and_reports_their_spread(located):
    enc, maps, image, records = located
    estimate = Geolocator(enc, maps, GeolocateSettings(k=4)).geolocate(image)
    assert estimate.success and estimate.method == "retrieval" and len(estimate.neighbours) == 4
    assert estimate.neighbours[0].keyframe.id == 3  # the same photo is in the map
    lats, lons = [r.lat for r in records], [r.lon for r in records]
    assert min(lats) <= estimate.lat <= max(lats) and min(lons) - 1e-9 <= estimate.lon <= max(lons) + 1e-9
    assert estimate.covariance[0] >= 10.0 ** 2 and estimate.covariance[4] >= 10.0 ** 2
    nearest, farthest = retrieve(maps, enc.encode([image])[0], 2)
    assert nearest[0].similarity >= nearest[1].similarity > farthest[-1].similarity >= farthest[0].similarity
    assert not retrieval_estimate([], GeolocateSettings()).success


def test_parse_coordinates():
    assert parse_coordinates('Sure! {"latitude": 45.01, "longitude": 7.002}') == (45.01, 7.002)
    assert parse_coordinates("I think it is at (48.8566, 2.3522), Paris.") == (48.8566, 2.3522)
    assert parse_coordinates('{"lat": "-33.9", "lng": 18.4}') == (-33.9, 18.4)
    assert parse_coordinates("somewhere in Europe") is None
    assert parse_coordinates('{"latitude": 95, "longitude": 7}') is None


def test_lmm_answer_is_parsed_checked_and_refused_when_implausible(located):
    enc, maps, image, _ = located
    answers = [(0.0, '{"latitude": 45.0013, "longitude": 7.0004}'), (0.0, '{"latitude": 48.85, "longitude": 2.35}')]
    with chat_server(answers) as server:
        client = LmmClient(server.url, model="llava-test", timeout_s=5.0, retries=0)
        geo = Geolocator(enc, maps, GeolocateSettings(k=3), client)
        accepted = geo.geolocate(image)
        refused = geo.geolocate(image)
    assert accepted.method == "lmm" and (accepted.lat, accepted.lon) == (45.0013, 7.0004)
    assert accepted.covariance[0] == 25_000.0 ** 2
    assert refused.success and refused.method == "retrieval" and "refused" in refused.message
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["body"]["model"] == "llava-test"
    text, picture = request["body"]["messages"][0]["content"]
    assert "45.00" in text["text"] and picture["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert client.snapshot() == {"lmm_accepted": 1, "lmm_answers": 2, "lmm_refusals": 1, "lmm_requests": 2}


def test_lmm_timeouts_are_retried_and_counted(located):
    enc, maps, image, _ = located
    with chat_server([(1.5, "{}"), (0.0, '{"latitude": 45.001, "longitude": 7.0}')]) as server:
        client = LmmClient(server.url, timeout_s=0.5, retries=1)
        estimate = Geolocator(enc, maps, GeolocateSettings(k=3), client).geolocate(image)
    assert estimate.method == "lmm"
    counts = client.snapshot()
    assert counts["lmm_timeouts"] == 1 and counts["lmm_retries"] == 1 and counts["lmm_requests"] == 2
    dead = LmmClient("http://127.0.0.1:9/v1", timeout_s=0.5, retries=0)  # port 9 (discard): nothing listens
    fallback = Geolocator(enc, maps, GeolocateSettings(k=3), dead).geolocate(image)
    assert fallback.method == "retrieval" and "model failed" in fallback.message
    assert dead.snapshot()["lmm_errors"] == 1
    assert math.isfinite(fallback.lat)


def test_geoloc_geolocate_command(text_map, capsys):
    records, map_dir, _ = text_map
    assert geoloc(["geolocate", str(records[2].path), "--map", str(map_dir), "-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "retrieval" and out["neighbours"][0]["id"] == 2 and out["sigma_m"] >= 10.0
    with chat_server([(0.0, "(45.0011, 7.0001)")]) as server:
        assert geoloc(["geolocate", str(records[2].path), "--map", str(map_dir), "--lmm-url", server.url]) == 0
    out = capsys.readouterr().out
    assert "lmm: lat 45.001100 lon 7.000100" in out and "lmm_accepted 1" in out


def test_map_build_from_a_bag_takes_addresses_from_its_string_topic(shared_data, tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS2_HUMBLE)
    T = ts.types
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:3]
    with Writer(tmp_path / "bag", version=9) as w:
        cams = w.add_connection("/cam", "sensor_msgs/msg/Image", typestore=ts)
        fixes = w.add_connection("/fix", "sensor_msgs/msg/NavSatFix", typestore=ts)
        words = w.add_connection("/address", "std_msgs/msg/String", typestore=ts)
        for i, r in enumerate(records):
            t = (10 + 5 * i) * 10**9
            stamp = T["builtin_interfaces/msg/Time"](sec=t // 10**9, nanosec=0)
            header = T["std_msgs/msg/Header"](stamp=stamp, frame_id="camera")
            rgb = read_image(r.path)[::4, ::4].copy()
            image = T["sensor_msgs/msg/Image"](header=header, height=rgb.shape[0], width=rgb.shape[1],
                                               encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3,
                                               data=rgb.reshape(-1))
            status = T["sensor_msgs/msg/NavSatStatus"](status=0, service=1)
            fix = T["sensor_msgs/msg/NavSatFix"](header=header, status=status, latitude=r.lat, longitude=r.lon,
                                                 altitude=0.0, position_covariance=np.zeros(9),
                                                 position_covariance_type=0)
            w.write(cams, t, ts.serialize_cdr(image, "sensor_msgs/msg/Image"))
            w.write(fixes, t, ts.serialize_cdr(fix, "sensor_msgs/msg/NavSatFix"))
            w.write(words, t + 3 * 10**8, ts.serialize_cdr(T["std_msgs/msg/String"](data=ADDRESSES[i]),
                                                           "std_msgs/msg/String"))
    save_encoder(tiny_encoder(), tmp_path / "enc")
    assert geoloc(["map", "build", "--encoder", str(tmp_path / "enc"), "--bag", str(tmp_path / "bag"),
                   "--image-topic", "/cam", "--fix-topic", "/fix", "--address-topic", "/address", "--out",
                   str(tmp_path / "map"), "--quiet", "--local-features", "none"]) == 0
    assert list(MapDatabase.load(tmp_path / "map").column("address")) == ADDRESSES[:3]

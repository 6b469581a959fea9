"""The language side against hostile input (docs/language.md): model servers that stall, drip, lie about their
length, close mid-answer, answer without end or with bytes that are not text, or answer 40,000 digits; text
queries of a megabyte; address tables with NaN points, null addresses and JSON nested too deeply; checkpoint
headers nested 100k deep. Each gets a bounded refusal with its reason, never a hang or a traceback. Every server
listens on 127.0.0.1 only (test/hostile_servers.py, test/language_fixtures.py)."""

from __future__ import annotations

import json
import math
import threading

from hostile_servers import hostile_server
from hypothesis import given, settings
from hypothesis import strategies as st
from language_fixtures import chat_server
import numpy as np
import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.datasets import read_sequence
from geoloc_ros.language import annotate
from geoloc_ros.language.geolocate import parse_coordinates
from geoloc_ros.language.lmm_client import MAX_ANSWER_BYTES, LmmClient, LmmError
from geoloc_ros.language.text_search import MAX_TEXT_CHARS, TextSearch
from geoloc_ros.mapping import Keyframe, MapDatabase
from geoloc_ros.model import save_encoder
from geoloc_ros.model.checkpoint import CheckpointError, read_header, read_safetensors_metadata
from geoloc_ros.model.testing import tiny_encoder

MESSAGES = [{"role": "user", "content": "where?"}]


def test_a_dripping_server_is_cut_off_at_the_call_deadline():
    """One byte every 50 ms never trips a per-read timeout; the deadline covers the whole answer."""
    with hostile_server("drip") as server:
        client = LmmClient(server.url, timeout_s=0.5, retries=1)
        with pytest.raises(LmmError, match="no complete answer within 0.5 s"):
            client.chat(MESSAGES)
        full = server.sent
    counts = client.snapshot()
    assert counts["lmm_timeouts"] == 2 and counts["lmm_requests"] == 2 and "lmm_answers" not in counts
    assert full < 100  # the client hung up long before the ~250-byte answer was complete


def test_a_stalled_server_times_out_and_is_retried():
    with hostile_server("stall") as server:
        client = LmmClient(server.url, timeout_s=0.3, retries=2)
        with pytest.raises(LmmError, match="no complete answer"):
            client.chat(MESSAGES)
    assert client.snapshot()["lmm_timeouts"] == 3 and server.requests == 3


@pytest.mark.parametrize("behaviour", ["close", "lie"])
def test_a_server_closing_mid_answer_is_an_error_retried_then_given_up(behaviour):
    """RemoteDisconnected (closed before the status line) and IncompleteRead (fewer bytes than promised)."""
    with hostile_server(behaviour) as server:
        client = LmmClient(server.url, timeout_s=5.0, retries=1)
        with pytest.raises(LmmError, match="cut short"):
            client.chat(MESSAGES)
    counts = client.snapshot()
    assert counts["lmm_errors"] == 2 and counts["lmm_retries"] == 1 and server.requests == 2


@pytest.mark.parametrize("behaviour", ["enormous", "enormous_declared"])
def test_an_endless_answer_is_refused_after_the_size_cap(behaviour):
    with hostile_server(behaviour) as server:
        client = LmmClient(server.url, timeout_s=10.0, retries=1)
        with pytest.raises(LmmError, match=f"{MAX_ANSWER_BYTES}"):
            client.chat(MESSAGES)
        sent = server.sent
    assert server.requests == 1  # the same question gets the same answer: not asked again
    assert sent < 16 * MAX_ANSWER_BYTES  # what the server managed to push before the client hung up


def test_an_answer_that_is_not_text_is_refused_once():
    with hostile_server("not_text") as server:
        client = LmmClient(server.url, timeout_s=5.0, retries=2)
        with pytest.raises(LmmError, match="not a chat-completions answer"):
            client.chat(MESSAGES)
    assert server.requests == 1 and client.snapshot()["lmm_errors"] == 1


def test_forty_thousand_digits_are_parsed_without_stalling():
    """The answer of digits is read in linear time: the parsing thread ends well within the bound."""
    with chat_server([(0.0, "4" * 40_000)]) as server:
        answer = LmmClient(server.url, timeout_s=10.0, retries=0).chat(MESSAGES)
    found = []
    worker = threading.Thread(target=lambda: found.append(parse_coordinates(answer)), daemon=True)
    worker.start()
    worker.join(20.0)
    assert not worker.is_alive() and found == [None]
    assert parse_coordinates("4" * 40_000 + " 45.5, 7.25") is None  # past the answer size that is read
    assert parse_coordinates("x" * 100 + "45.5 N, 7.25") == (45.5, 7.25)
    assert parse_coordinates("1" * 30 + ", 2") is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789-.,{}:\" °NSlatong"), max_size=2000))
def test_parse_coordinates_returns_none_or_a_wgs84_pair(text):
    found = parse_coordinates(text)
    assert found is None or (abs(found[0]) <= 90 and abs(found[1]) <= 180 and all(map(math.isfinite, found)))


@pytest.fixture(scope="module")
def small_map(shared_data, tmp_path_factory):
    """A 3-keyframe map with its encoder, built by `geoloc map build` (for the CLI against bad servers)."""
    tmp = tmp_path_factory.mktemp("hostile_map")
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:3]
    save_encoder(tiny_encoder(), tmp / "enc")
    with open(tmp / "images.csv", "w") as f:
        f.write("image,lat,lon\n" + "".join(f"{r.path},{r.lat:.8f},{r.lon:.8f}\n" for r in records))
    assert geoloc(["map", "build", "--encoder", str(tmp / "enc"), "--images", str(tmp / "images.csv"), "--out",
                   str(tmp / "map"), "--quiet", "--local-features", "none"]) == 0
    return records, tmp / "map"


@pytest.mark.parametrize("behaviour", ["close", "drip"])
def test_geoloc_geolocate_falls_back_when_the_server_misbehaves(small_map, behaviour, capsys):
    records, map_dir = small_map
    with hostile_server(behaviour) as server:
        assert geoloc(["geolocate", str(records[1].path), "--map", str(map_dir), "--lmm-url", server.url,
                       "--lmm-timeout", "0.5", "--lmm-retries", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "retrieval" and "model failed" in out["message"]


def text_db(addresses):
    db = MapDatabase.create("words", 8, "f" * 64)
    rng = np.random.default_rng(0)
    db.add(rng.normal(size=(len(addresses), 8)), [Keyframe(lat=45.0 + i * 1e-4, lon=7.0, address=a)
                                                  for i, a in enumerate(addresses)])
    return [("m", "words", db)]


def test_find_place_refuses_a_megabyte_and_caps_the_words():
    search = TextSearch(text_db(["1 Castle Hill", "3 Harbour Road", "12 Market Street"]))
    refused = search.find("castle " * 150_000)
    assert not refused.success and "refused" in refused.message and str(MAX_TEXT_CHARS) in refused.message
    repeated = search.find(("castle " * 1000)[:MAX_TEXT_CHARS])
    assert repeated.success and repeated.places[0].keyframe.address == "1 Castle Hill"
    many = search.find(" ".join(f"w{i}" for i in range(300)) + " harbour", max_results=2 ** 32 - 1)
    assert many.success and many.places == []  # only the first 32 distinct words are looked for


def write_json(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def point(lon, lat, address):
    return {"type": "Feature", "properties": {"address": address},
            "geometry": {"type": "Point", "coordinates": [lon, lat]}}


@pytest.mark.parametrize("features, reason", [
    ([point(7.0, 45.0, "1 Castle Hill"), point(float("nan"), 45.001, "2 Castle Hill")], "not a WGS84 position"),
    ([point(7.0, 45.0, "1 Castle Hill"), point(7.0, 45.001, None)], "null, not text"),
    ([point(7.0, 95.0, "1 Castle Hill")], "not a WGS84 position"),
    ([point(7.0, 45.0, ["1 Castle Hill"])], "not text"),
])
def test_address_tables_with_bad_points_are_refused_naming_the_feature(tmp_path, features, reason):
    path = tmp_path / "table.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}).replace("NaN", "NaN"))
    with pytest.raises(annotate.AnnotationError, match=reason):
        annotate.read_address_table(path)


def test_address_csv_with_a_nan_point_is_refused(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("lat,lon,address\n45.0,7.0,1 Castle Hill\nnan,7.0,2 Castle Hill\n")
    with pytest.raises(annotate.AnnotationError, match=r"table.csv:3: .*not a WGS84 position"):
        annotate.read_address_table(path)
    path.write_text("lat,lon,address\n45.0,7.0,1 Castle Hill\n45.0001,7.0,12\n")
    table = annotate.read_address_table(path)
    assert table.lookup(45.0, 7.0) == "1 Castle Hill" and table.lookup(45.0001, 7.0) == "12"


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(annotate.AnnotationError, match="nested too deeply"):
        annotate.read_address_table(write_json(tmp_path / "deep.geojson", deep))
    nested = '{"type": "FeatureCollection", "features": ' + deep + "}"
    with pytest.raises(annotate.AnnotationError, match="nested too deeply"):
        annotate.read_address_table(write_json(tmp_path / "nested.geojson", nested))


def safetensors_file(path, header: bytes):
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_a_safetensors_header_nested_100k_deep_is_refused(tmp_path):
    deep = b'{"__metadata__": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"}"
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_safetensors_metadata(safetensors_file(tmp_path / "deep.safetensors", deep))
    arch = json.dumps({"__metadata__": {"format": "x", "arch": "[" * 100_000 + "]" * 100_000}}).encode()
    with pytest.raises(CheckpointError, match="'arch' is not readable JSON"):
        read_header(safetensors_file(tmp_path / "arch.safetensors", arch))
    odd = json.dumps({"__metadata__": {"format": 1}}).encode()
    with pytest.raises(CheckpointError, match="not an object of strings"):
        read_safetensors_metadata(safetensors_file(tmp_path / "odd.safetensors", odd))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600))
def test_safetensors_header_reader_loads_or_refuses_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    path.write_bytes(data)
    try:
        meta = read_header(path)
    except CheckpointError as e:
        assert str(path) in str(e)
    else:
        assert isinstance(meta, dict)


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)
features_strategy = st.lists(st.fixed_dictionaries({
    "type": st.just("Feature"),
    "properties": st.one_of(json_values, st.fixed_dictionaries({"address": json_values})),
    "geometry": st.one_of(json_values, st.fixed_dictionaries({
        "type": st.sampled_from(["Point", "Polygon", "MultiPolygon", "Line"]), "coordinates": json_values}))}),
    max_size=5)


@settings(max_examples=150, deadline=None)
@given(features_strategy)
def test_address_table_reader_loads_or_refuses_arbitrary_features(tmp_path_factory, features):
    path = tmp_path_factory.mktemp("addr") / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    try:
        table = annotate.read_address_table(path)
    except annotate.AnnotationError as e:
        assert str(path) in str(e)
        return
    for lat, lon, address in table.points:
        assert math.isfinite(lat) and math.isfinite(lon) and isinstance(address, str) and address != "None"
    assert isinstance(table.lookup(45.0, 7.0), str)

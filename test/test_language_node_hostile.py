"""geoloc_vpr's ~/geolocate and ~/find_place over real DDS against hostile input (docs/language.md): a model
server that closes mid-answer or answers 40,000 digits, and a megabyte of one repeated word. The node answers
each with the retrieval estimate or a refusal that says why, counts it in /diagnostics and keeps localising
camera frames. Servers listen on 127.0.0.1 only."""

from __future__ import annotations

import pytest

pytest.importorskip("rclpy")

from hostile_servers import hostile_server  # noqa: E402
from language_fixtures import address_csv, chat_server  # noqa: E402

from geoloc_ros.cli import main as geoloc  # noqa: E402
from geoloc_ros.datasets import read_image, read_sequence  # noqa: E402
from geoloc_ros.model import save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.replay import Harness, InProcessNode, image_message  # noqa: E402

T0 = 1_700_000_000 * 10**9
FAST = {"diagnostics_period_s": 0.2, "device": "cpu"}


@pytest.fixture(scope="module")
def text_map(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lang_node_hostile")
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    save_encoder(tiny_encoder(), tmp / "enc")
    csv_path = address_csv(shared_data, records, tmp / "images.csv")
    assert geoloc(["map", "build", "--encoder", str(tmp / "enc"), "--images", str(csv_path), "--out",
                   str(tmp / "map"), "--quiet", "--local-features", "none"]) == 0
    return records, str(tmp / "map")


@pytest.fixture
def node_for(rclpy_context):
    made = []

    def start(parameters):
        node = InProcessNode(rclpy_context, {**FAST, **parameters})
        harness = Harness(rclpy_context)
        made.append((node, harness))
        assert node.active and harness.wait_for_subscriber()
        return node, harness

    yield start
    for node, harness in made:
        harness.close()
        node.close()


def call(harness, srv_type, name, request, timeout=60.0):
    client = harness.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(request)
    assert harness.wait_for(future.done, timeout=timeout)
    return future.result()


def test_a_server_closing_mid_answer_falls_back_and_a_megabyte_query_is_refused(text_map, node_for):
    from geoloc_msgs.srv import FindPlace, Geolocate

    records, map_dir = text_map
    with hostile_server("close") as server:
        node, h = node_for({"map_path": [map_dir], "lmm_url": server.url, "lmm_timeout_s": 2.0, "lmm_retries": 1})
        image = Geolocate.Request(image=image_message(read_image(records[3].path), T0))
        answer = call(h, Geolocate, "/geoloc_vpr/geolocate", image)
    assert answer.success and answer.method == "retrieval" and "model failed" in answer.message, answer.message
    assert "cut short" in answer.message
    refused = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="castle " * 150_000))
    assert not refused.success and "refused" in refused.message and refused.places == []
    found = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="castle castle castle"))
    assert found.success and found.places
    counters = ("lmm_errors", "lmm_retries", "find_place_refusals", "find_place_calls")
    assert h.wait_for(lambda: tuple(h.diag_values().get(k) for k in counters) == ("2", "1", "1", "2"),
                      timeout=10), h.diag_values()


def test_forty_thousand_digits_are_refused_while_frames_keep_being_localised(text_map, node_for):
    from geoloc_msgs.srv import Geolocate

    records, map_dir = text_map
    with chat_server([(0.0, "4" * 40_000)]) as server:
        node, h = node_for({"map_path": [map_dir], "lmm_url": server.url, "lmm_timeout_s": 10.0})
        client = h.node.create_client(Geolocate, "/geoloc_vpr/geolocate")
        assert client.wait_for_service(timeout_sec=10)
        pending = client.call_async(Geolocate.Request(image=image_message(read_image(records[3].path), T0)))
        for i in range(3):
            h.publish(image_message(read_image(records[i].path), T0 + (i + 1) * 10**8))
        assert h.wait_for(lambda: len(h.data.results["place_recognition"]) >= 1, timeout=30.0)
        assert h.wait_for(pending.done, timeout=60.0)
    answer = pending.result()
    assert answer.success and answer.method == "retrieval" and "no coordinates" in answer.message
    assert h.wait_for(lambda: h.diag_values().get("lmm_refusals") == "1", timeout=10), h.diag_values()

"""geoloc_vpr's places-in-words interfaces over real DDS (docs/language.md): ~/address, ~/find_place and
~/geolocate (retrieval with no endpoint; the parsed model answer and a refused one with a local chat-completions
test server on 127.0.0.1 -- no model runs here, the server answers what the test tells it), and a slow model
server not holding up the camera path. Hostile input too: a model server that closes mid-answer or answers 40,000
digits, and a megabyte of one repeated word, each answered with the retrieval estimate or a refusal that says why,
counted in /diagnostics, while camera frames keep being localised. Servers listen on 127.0.0.1 only."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("rclpy")

from hostile_servers import hostile_server  # noqa: E402
from language_fixtures import ADDRESSES, address_csv, chat_server  # noqa: E402

from geoloc_ros.cli import main as geoloc  # noqa: E402
from geoloc_ros.datasets import read_image, read_sequence  # noqa: E402
from geoloc_ros.model import save_encoder  # noqa: E402
from geoloc_ros.model.testing import tiny_encoder  # noqa: E402
from geoloc_ros.replay import Harness, InProcessNode, image_message  # noqa: E402

T0 = 1_700_000_000 * 10**9
FAST = {"diagnostics_period_s": 0.2, "device": "cpu"}


@pytest.fixture(scope="module")
def street_text_map(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lang_node")
    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    save_encoder(tiny_encoder(), tmp / "enc")
    csv_path = address_csv(shared_data, records, tmp / "images.csv")
    assert geoloc(["map", "build", "--encoder", str(tmp / "enc"), "--images", str(csv_path), "--out",
                   str(tmp / "map"), "--quiet", "--local-features", "none"]) == 0
    return records, str(tmp / "map")


@pytest.fixture
def running(rclpy_context):
    """start(params) -> (InProcessNode, Harness); closed afterwards."""
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


def call(harness, srv_type, name, request, timeout=30.0):
    client = harness.node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=10)
    future = client.call_async(request)
    assert harness.wait_for(future.done, timeout=timeout)
    return future.result()


def test_address_topic_diagnostics_and_find_place(street_text_map, running):
    from std_msgs.msg import String

    from geoloc_msgs.srv import FindPlace
    from geoloc_ros.vpr_node import RESULT_QOS

    records, map_dir = street_text_map
    node, h = running({"map_path": [map_dir]})
    heard = []
    h.node.create_subscription(String, "/geoloc_vpr/address", lambda m: heard.append(m.data), RESULT_QOS)
    time.sleep(0.5)  # the new subscription is discovered
    h.publish(image_message(read_image(records[4].path), T0))
    assert h.wait_for(lambda: heard, timeout=30), "no ~/address message"
    best = h.data.results["place_recognition"][T0].candidates[0]
    assert heard[0] == best.address == ADDRESSES[best.keyframe_id] == "1 Castle Hill"
    assert h.wait_for(lambda: h.diag_values().get("address") == "1 Castle Hill", timeout=10)

    answer = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="harbour quay", max_results=2))
    assert answer.success and answer.method == "fts5" and "no CLIP text tower" in answer.message
    place = answer.places[0]
    assert place.address == "3 Harbour Road" and place.keyframe_id == 2
    assert abs(place.latitude - records[2].lat) < 1e-7  # the CSV holds 8 decimals and place.pose.position.y > 50.0
    empty = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text=""))
    assert not empty.success and "empty text" in empty.message


def test_geolocate_retrieval_without_endpoint(street_text_map, running):
    from geoloc_msgs.srv import Geolocate

    records, map_dir = street_text_map
    node, h = running({"map_path": [map_dir], "geolocate_k": 3})
    none_yet = call(h, Geolocate, "/geoloc_vpr/geolocate", Geolocate.Request())
    assert not none_yet.success and "no camera frame" in none_yet.message
    request = Geolocate.Request(image=image_message(read_image(records[1].path), T0))
    answer = call(h, Geolocate, "/geoloc_vpr/geolocate", request)
    assert answer.success and answer.method == "retrieval" and len(answer.neighbours) == 3
    assert answer.neighbours[0].keyframe_id == 1
    lats = [r.lat for r in records]
    assert min(lats) <= answer.fix.latitude <= max(lats)
    assert answer.fix.position_covariance[0] >= 5.0 ** 2  # covariance_floor_m
    assert answer.fix.status.status == answer.fix.status.STATUS_FIX


def test_geolocate_with_a_model_server_parses_refuses_and_keeps_the_camera_path_going(street_text_map, running):
    from geoloc_msgs.srv import Geolocate

    records, map_dir = street_text_map
    answers = [(0.0, 'It looks like {"latitude": 45.0012, "longitude": 7.0003}.'),
               (0.0, '{"latitude": -33.86, "longitude": 151.2}'),
               (5.0, '{"latitude": 45.001, "longitude": 7.0}')]
    with chat_server(answers) as server:
        node, h = running({"map_path": [map_dir], "lmm_url": server.url, "lmm_timeout_s": 10.0})
        image = Geolocate.Request(image=image_message(read_image(records[3].path), T0))
        parsed = call(h, Geolocate, "/geoloc_vpr/geolocate", image)
        assert parsed.success and parsed.method == "lmm", parsed.message
        assert (parsed.fix.latitude, parsed.fix.longitude) == (45.0012, 7.0003)
        assert parsed.fix.position_covariance[0] == 25_000.0 ** 2
        refused = call(h, Geolocate, "/geoloc_vpr/geolocate", image)
        assert refused.success and refused.method == "retrieval" and "refused" in refused.message

        # The third answer takes 5 s: frames published meanwhile are still localised.
        client = h.node.create_client(Geolocate, "/geoloc_vpr/geolocate")
        slow = client.call_async(image)
        time.sleep(0.5)
        for i in range(3):
            h.publish(image_message(read_image(records[i].path), T0 + (i + 1) * 10**8))
            time.sleep(0.2)
        got = h.wait_for(lambda: len(h.data.results["place_recognition"]) >= 1, timeout=3.0)
        assert got and not slow.done(), "the camera path waited for the model server"
        assert h.wait_for(slow.done, timeout=30) and slow.result().method == "lmm"
    counters = ("lmm_refusals", "lmm_accepted", "geolocate_calls")
    assert h.wait_for(lambda: tuple(h.diag_values().get(k) for k in counters) == ("1", "2", "3"), timeout=10), \
        h.diag_values()


def test_address_stage_checkpoint_loads_in_the_node_and_answers_with_its_text_tower(shared_data, tmp_path, running):
    from language_fixtures import CAPTIONS

    from geoloc_msgs.srv import FindPlace
    from geoloc_ros.language.address_training import AddressSample, address_stage

    records = read_sequence(shared_data / "toy_streets" / "database", spacing=50.0, origin=(45.0, 7.0))[:6]
    samples = [AddressSample(read_image(r.path), a, c, r.lat, r.lon) for r, a, c in zip(records, ADDRESSES, CAPTIONS)]
    stage, _ = address_stage(tiny_encoder(), samples, steps=2, batch_size=6, lr=1e-3)
    stage.save(tmp_path / "run")
    csv_path = address_csv(shared_data, records, tmp_path / "images.csv")
    assert geoloc(["map", "build", "--encoder", str(tmp_path / "run"), "--images", str(csv_path), "--out",
                   str(tmp_path / "map"), "--quiet", "--local-features", "none"]) == 0
    node, h = running({"map_path": [str(tmp_path / "map")]})
    answer = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="14 Market Street", max_results=3))
    assert answer.success and answer.method == "clip_text" and len(answer.places) == 3, answer.message


def test_a_server_closing_mid_answer_falls_back_and_a_megabyte_query_is_refused(street_text_map, running):
    from geoloc_msgs.srv import FindPlace, Geolocate

    records, map_dir = street_text_map
    with hostile_server("close") as server:
        node, h = running({"map_path": [map_dir], "lmm_url": server.url, "lmm_timeout_s": 2.0, "lmm_retries": 1})
        image = Geolocate.Request(image=image_message(read_image(records[3].path), T0))
        answer = call(h, Geolocate, "/geoloc_vpr/geolocate", image, timeout=60.0)
    assert answer.success and answer.method == "retrieval" and "model failed" in answer.message, answer.message
    assert "cut short" in answer.message
    refused = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="castle " * 150_000),
                   timeout=60.0)
    assert not refused.success and "refused" in refused.message and refused.places == []
    found = call(h, FindPlace, "/geoloc_vpr/find_place", FindPlace.Request(text="castle castle castle"),
                 timeout=60.0)
    assert found.success and found.places
    counters = ("lmm_errors", "lmm_retries", "find_place_refusals", "find_place_calls")
    assert h.wait_for(lambda: tuple(h.diag_values().get(k) for k in counters) == ("2", "1", "1", "2"),
                      timeout=10), h.diag_values()


def test_forty_thousand_digits_are_refused_while_frames_keep_being_localised(street_text_map, running):
    from geoloc_msgs.srv import Geolocate

    records, map_dir = street_text_map
    with chat_server([(0.0, "4" * 40_000)]) as server:
        node, h = running({"map_path": [map_dir], "lmm_url": server.url, "lmm_timeout_s": 10.0})
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

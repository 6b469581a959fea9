"""Issue 16, parameters: every bad value (out of range, wrong type, not an allowed word, invalid topic name) is
refused with the reason before anything heavy loads, at start-up (`-p name:=value`) and on `ros2 param set`;
`map_path` takes a string or a list. Real rclpy nodes (in-process) and the real VprNode."""

import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from geoloc_ros.node import params

MAP = "/nonexistent/map"  # never loaded: every case here is refused first


def node_with(context, *overrides, name="params_test"):
    args = ["--ros-args"] + [a for o in overrides for a in ("-p", o)]
    node = Node(name, context=context, cli_args=args)
    params.declare(node)
    return node


BAD_AT_STARTUP = [
    ("top_k:=0", r"top_k.*out of range"),
    ("min_similarity:=-5.0", r"min_similarity.*out of range"),
    ("top_k:=five", r"top_k: expected an integer, got 'five'"),
    ("top_k:=2.5", r"top_k: expected an integer, got 2.5"),
    ("verification:=maybe", r"verification: expected true or false, got 'maybe'"),
    ("consistency_mode:=bogus", r"consistency_mode: 'bogus' is not one of consecutive, sequence"),
    ("image_qos:=fast", r"image_qos: 'fast' is not one of auto, reliable, sensor_data, system_default"),
    ("image_topics:=['/camera/image raw']", r"image_topics: '/camera/image raw' is not a valid topic name"),
    ("fix_topic:=gnss fix", r"fix_topic: 'gnss fix' is not a valid topic name"),
    ("device:=gpu", r"device: 'gpu'"),
    ("encoder_backend:=tensorflow", r"encoder_backend: 'tensorflow' is not one of auto, torch"),
    ("max_image_pixels:=0", r"max_image_pixels.*out of range"),
    ("mono16_max:=70000", r"mono16_max.*out of range"),
    ("map_path:=['']", r"no encoder: map_path \[''\] names no map"),
    ("map_path:=[1, 2]", r"map_path: expected a string or a list of strings"),
]


@pytest.mark.parametrize("override, reason", BAD_AT_STARTUP)
def test_bad_startup_values_are_refused_by_read_with_the_reason(rclpy_context, override, reason):
    node = node_with(rclpy_context, override, f"map_path:={MAP}" if "map_path" not in override else "top_k:=5")
    with pytest.raises(params.ParameterError, match=reason):
        params.read(node)
    node.destroy_node()


def test_map_path_takes_a_string_or_a_list(rclpy_context):
    one = params.read(node_with(rclpy_context, "map_path:=/data/map", name="one"))
    assert one.map_path == ["/data/map"] and one.maps == ["/data/map"]
    two = params.read(node_with(rclpy_context, "map_path:=[/siteA/map, /siteB/map]", name="two"))
    assert two.maps == ["/siteA/map", "/siteB/map"]


def test_an_empty_map_path_needs_a_session_map(rclpy_context):
    node = node_with(rclpy_context, "map_path:=['']", "encoder_path:=/some/encoder.safetensors")
    with pytest.raises(params.ParameterError, match=r"names no map and session_map is false"):
        params.read(node)
    assert node.set_parameters([Parameter("session_map", value=True)])[0].successful
    assert params.read(node).maps == []


def test_defaults_and_new_parameters(rclpy_context):
    s = params.read(node_with(rclpy_context, f"map_path:={MAP}"))
    assert (s.image_qos, s.max_image_pixels, s.mono16_max) == ("auto", 40_000_000, 0)
    whole = params.read(node_with(rclpy_context, f"map_path:={MAP}", "min_similarity:=1", name="whole"))
    assert whole.min_similarity == 1.0 and isinstance(whole.min_similarity, float)  # `:=1` for a float is fine
    assert params.image_qos_profile("reliable").reliability == ReliabilityPolicy.RELIABLE
    assert params.image_qos_profile("auto").reliability == ReliabilityPolicy.RELIABLE  # until publishers say
    assert params.image_qos_profile("sensor_data").reliability == ReliabilityPolicy.BEST_EFFORT
    assert params.image_qos_profile("reliable").depth == params.IMAGE_QUEUE_DEPTH == 5
    params.image_qos_profile("system_default")
    with pytest.raises(params.ParameterError, match="image_qos"):
        params.image_qos_profile("bogus")


SET_BAD = [("top_k", 0), ("top_k", "five"), ("min_similarity", -5.0), ("consistency_mode", "bogus"),
           ("image_topics", ["/camera/image raw"]), ("image_qos", "fast"), ("map_path", [3])]


def test_param_set_of_a_bad_value_is_refused_with_the_reason(rclpy_context):
    node = node_with(rclpy_context, f"map_path:={MAP}")
    for name, value in SET_BAD:
        (result,) = node.set_parameters([Parameter(name, value=value)])
        assert not result.successful and name in result.reason, (name, value, result.reason)
    before = params.read(node)
    assert before.top_k == 5 and before.consistency_mode == "consecutive"  # nothing changed
    (ok,) = node.set_parameters([Parameter("map_path", value="/other/map")])
    assert ok.successful and params.read(node).maps == ["/other/map"]


def test_a_good_set_replaces_a_refused_startup_value(rclpy_context):
    node = node_with(rclpy_context, "top_k:=0", f"map_path:={MAP}")
    with pytest.raises(params.ParameterError, match="top_k"):
        params.read(node)
    assert node.set_parameters([Parameter("top_k", value=3)])[0].successful
    assert params.read(node).top_k == 3


@pytest.mark.parametrize("override, reason", [("top_k:=five", "top_k"), ("consistency_mode:=bogus", "bogus"),
                                              ("image_topics:=['/camera/image raw']", "not a valid topic name")])
def test_vpr_node_stays_unconfigured_with_the_reason_before_loading(rclpy_context, override, reason):
    from geoloc_ros.vpr_node import VprNode

    node = VprNode(context=rclpy_context, cli_args=["--ros-args", "-p", "autostart:=false", "-p", override,
                                                    "-p", f"map_path:={MAP}"])
    node.trigger_configure()
    assert node.lifecycle_state == "unconfigured"
    assert reason in node.last_error and "no such map" not in node.last_error  # refused before any map load
    node.destroy_node()


def test_generated_files_are_current():
    """config/*.yaml and the docs' parameter tables are generated from the specs: a stale one fails here."""
    import subprocess
    import sys

    root = params.__file__.rsplit("/geoloc_ros/", 1)[0]
    done = subprocess.run([sys.executable, "tools/gen_params.py", "--check"], cwd=root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_parameter_added_to_a_spec_is_declared_checked_and_documented(rclpy_context):
    from rclpy.node import Node

    from geoloc_ros import ros_params
    from geoloc_ros.ros_params import Param, Section

    extra = Param("extra_spacing_m", 2.5, "A parameter added in one place.", (0.0, 10.0))
    spec = params.SPEC + (Section("added", (extra,)),)
    yaml_text = ros_params.render_yaml(spec, "geoloc_vpr", "header")
    assert "extra_spacing_m: 2.5" in yaml_text and "A parameter added in one place. Range 0.0..10.0." in yaml_text
    assert "| `extra_spacing_m` | `2.5` | 0.0..10.0 | A parameter added in one place. |" in \
        ros_params.render_table(spec)
    node = Node("added_param", context=rclpy_context, cli_args=["--ros-args", "-p", "extra_spacing_m:=11.0"])
    ros_params.declare(node, spec)
    (described,) = node.describe_parameters(["extra_spacing_m"])
    assert described.description == "A parameter added in one place."
    assert described.floating_point_range[0].to_value == 10.0
    with pytest.raises(params.ParameterError, match="extra_spacing_m"):
        ros_params.read(node, spec)
    assert node.set_parameters([Parameter("extra_spacing_m", value=3)])[0].successful
    assert ros_params.read(node, spec)["extra_spacing_m"] == 3.0
    node.destroy_node()


def test_settings_and_localizer_config_follow_the_spec():
    from dataclasses import FrozenInstanceError, fields

    from geoloc_ros.localization import LocalizerConfig

    assert [f.name for f in fields(params.Settings)] == [p.name for p in params.PARAMETERS]
    s = params.settings(map_path=["/a", "", "/b"], agreement_radius_m=12.0, consistency_radius_m=80.0)
    config = params.localizer_config(s)
    assert config.maps == ("/a", "/b") and config.fusion_radius_m == 12.0
    assert config.consistency_radius_m == 80.0 and config.odometry_tolerance_m == 50.0  # two parameters now
    with pytest.raises(FrozenInstanceError):
        config.top_k = 3
    with pytest.raises(ValueError, match="consistency_mode 'bogus'"):
        LocalizerConfig(consistency_mode="bogus")
    core = {f.name for f in fields(LocalizerConfig)}
    assert not core & {"image_topics", "image_qos", "map_frame", "lmm_url", "autostart", "session_map_path"}


def test_descriptions_say_what_the_code_does(rclpy_context):
    by_name = {p.name: p for p in params.PARAMETERS}
    assert "bit depth" in by_name["mono16_max"].description and "percentile" not in by_name["mono16_max"].description
    assert f"depth {params.IMAGE_QUEUE_DEPTH}" in by_name["image_qos"].description
    assert "Depth 1" not in by_name["image_qos"].description
    node = node_with(rclpy_context, f"map_path:={MAP}", name="read_only")
    (result,) = node.set_parameters([Parameter("diagnostics_period_s", value=2.0)])
    assert not result.successful  # read once, at start: a later value would be silently ignored

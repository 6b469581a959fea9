"""`geoloc bench --quick` runs every part end to end and writes its JSON and PNG files. Figures are reported, never
asserted (timing on a shared CPU is not a test); what is asserted is that each record says where it was measured."""

import json

import pytest


def test_bench_quick_writes_json_and_plots(tmp_path, shared_data):
    from geoloc_ros.cli import main

    out = tmp_path / "bench"
    rc = main(["bench", "--quick", "--out", str(out)])
    assert rc == 0                                        # encoder, map build and training measured
    enc = json.loads((out / "encoder.json").read_text())
    assert enc["status"] == "measured" and enc["quick"] is True
    m = enc["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["versions"]["torch"] and "bench" in m["command"]
    models = enc["result"]["models"]
    assert {"bundled" in m["model"] for m in models} == {True, False}
    for model in models:
        assert next(iter(model["variants"])) == "auto" and model["variants"]["auto"]["chose"]   # defaults first
        base = model["variants"]["torch"]["runs"]
        assert set(base) == {"1", "16"} and base["1"]["ratio_vs_torch"] == 1.0
        for label, v in model["variants"].items():
            assert "error" not in v, (model["model"], label, v)
            # every fp32 path keeps the reference descriptors; bf16 (opt-in on CPU) keeps them as far as the
            # weights allow: the current bundled encoder stays at 0.9989 on these camera images (docs/benchmarks.md)
            bound = 0.995 if "bf16" in label else 0.999
            assert v["cosine_min_vs_fp32"] >= bound, (model["model"], label)
            assert v["runs"]["16"]["images_per_s"] > 0
    assert (out / "encoder.png").stat().st_size > 1000
    mb = json.loads((out / "mapbuild.json").read_text())
    assert mb["status"] == "measured" and mb["result"]["backends"]["torch"]["images_per_s"] > 0
    assert (out / "mapbuild.png").is_file()
    train = json.loads((out / "train.json").read_text())
    assert train["status"] == "measured" and train["result"]["variants"]["fp32 NCHW"]["s_per_step"] > 0
    assert (out / "train.png").is_file()
    # node and retrieval belong to other modules: they either ran or say why not
    for part in ("node_run", "retrieval_run"):
        rec = json.loads((out / f"{part}.json").read_text())
        assert rec["status"] in ("measured", "not measured") and rec["machine"]["cpu"]
    summary = (out / "summary.md").read_text()
    assert "## encoder" in summary and "× eager" in summary


def test_bench_rejects_unknown_part():
    from geoloc_ros.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "gpu-magic"])

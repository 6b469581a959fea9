"""geoloc_ros.model.config and `geoloc train`'s flags: generated from TrainConfig, recipes as data."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from geoloc_ros.cli import train as train_cli
from geoloc_ros.model.config import TrainConfig, config_fields, load_recipe


def _parse(*argv):
    p = argparse.ArgumentParser()
    train_cli.add_parser(p.add_subparsers())
    return p.parse_args(["train", "--run-dir", "x", *argv])


def test_config_imports_without_torch():
    code = "import sys, geoloc_ros.model.config, geoloc_ros.cli.train; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_every_field_has_help_and_a_generated_flag_of_its_type():
    args = _parse()
    for f in config_fields():
        assert f.metadata["help"], f.name
        if f.metadata["flag"]:
            assert hasattr(args, f.name) and getattr(args, f.name) is None, f.name  # unset: the recipe decides
    args = _parse("--M", "12.5", "--image-size", "64x128", "--pool-grid", "1x2", "--lr-schedule", "cosine",
                  "--no-bf16", "--whiten", "--seed", "4", "--pretrained", "openai")
    assert (args.M, args.image_size, args.pool_grid, args.lr_schedule) == (12.5, [64, 128], [1, 2], "cosine")
    assert (args.bf16, args.whiten, args.seed, args.pretrained) == (False, True, 4, "openai")
    with pytest.raises(SystemExit):
        _parse("--lr-schedule", "step")


def test_nordland_recipe_is_data_and_loads_into_the_config():
    recipe = load_recipe("nordland")
    cfg = TrainConfig(**recipe)
    assert (cfg.arch, cfg.image_size, cfg.epochs, cfg.batch_size, cfg.pair_weight) == ("RN-nano", [64, 128], 24,
                                                                                        128, 2.0)
    assert cfg.bf16 and cfg.whiten and cfg.lr_schedule == "cosine"
    assert dataclasses.replace(cfg, epochs=2).epochs == 2


def test_a_recipe_with_an_unknown_setting_is_refused(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("epochs: 3\nepoch_count: 4\n")
    with pytest.raises(ValueError, match="epoch_count"):
        load_recipe(path)

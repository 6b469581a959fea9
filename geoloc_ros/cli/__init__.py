"""The `geoloc` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_parser(subparsers)``, which registers its parser and sets
``func`` to the callable that runs it. Modules import the project's packages and the heavy dependencies
(torch, faiss, rclpy) inside that callable, so ``geoloc --help`` loads little more than the parsers; the standard
library and numpy are imported at the top.
"""

import argparse
import importlib
import shlex
import sys

SUBCOMMANDS = ("train", "eval", "calibrate", "map", "geolocate", "describe", "demo", "bench", "export", "model")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="geoloc", description="Offline tools of geoloc_ros: train, evaluate, build maps, demo, benchmark."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"geoloc_ros.cli.{name}").add_parser(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    # The command line as typed, for outputs that record how they were made (benchmarks, reports).
    args.command_line = shlex.join(["geoloc", *argv])
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

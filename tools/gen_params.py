"""Write the files generated from the nodes' parameter specs (geoloc_ros/node/params.py,
geoloc_ros/slam/params.py): config/vpr.yaml, config/pose_graph.yaml and the parameter tables in docs/node.md and
docs/slam.md (between the params:begin / params:end markers).

    python tools/gen_params.py            # write them
    python tools/gen_params.py --check    # exit 1 naming each stale file (test_params.py runs this)
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geoloc_ros import ros_params  # noqa: E402
from geoloc_ros.node import params as vpr_params  # noqa: E402
from geoloc_ros.slam import params as pose_graph_params  # noqa: E402

TARGETS = ((vpr_params, "config/vpr.yaml", "docs/node.md"),
           (pose_graph_params, "config/pose_graph.yaml", "docs/slam.md"))


def generated() -> dict[Path, str]:
    """Every generated file's path and the text it must have."""
    out = {}
    for module, config, doc in TARGETS:
        out[ROOT / config] = ros_params.render_yaml(module.SPEC, module.NODE_NAME, module.YAML_HEADER)
        out[ROOT / doc] = ros_params.with_table((ROOT / doc).read_text(), ros_params.render_table(module.SPEC))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report stale files (exit 1 if any)")
    args = ap.parse_args(argv)
    files = generated()
    stale = [path for path, text in files.items() if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python tools/gen_params.py)")
        return 1 if stale else 0
    for path in stale:
        path.write_text(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

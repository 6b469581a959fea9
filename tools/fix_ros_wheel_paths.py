"""Point the ROS wheels' exported CMake files at this interpreter.

The ros-* wheels on PyPI were built in a manylinux container whose Python lived in
/opt/python/cp311-cp311; their exported *.cmake files and ament index entries still name that prefix, and
CMake stops at "non-existent path" when an interface package is built against them. This rewrites those
paths to this environment's include directory, site-packages and prefix. Idempotent.
"""

from pathlib import Path
import sys
import sysconfig

BUILD_PREFIX = "/opt/python/cp311-cp311"


def main() -> int:
    prefix = Path(sys.prefix)
    purelib = sysconfig.get_paths()["purelib"]
    include = sysconfig.get_paths()["include"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    replacements = [
        (f"{BUILD_PREFIX}/include/{version}", include),
        (f"{BUILD_PREFIX}/lib/{version}/site-packages", purelib),
        (BUILD_PREFIX, str(prefix)),
    ]
    roots = [prefix / "share", prefix / "lib" / "cmake", Path(purelib)]
    changed = 0
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if not path.is_file() or not (path.suffix == ".cmake" or "parent_prefix_path" in path.parts):
                continue
            text = path.read_text(errors="surrogateescape")
            if BUILD_PREFIX not in text:
                continue
            for old, new in replacements:
                text = text.replace(old, new)
            path.write_text(text, errors="surrogateescape")
            changed += 1
    print(f"fix_ros_wheel_paths: rewrote {changed} file(s) under {prefix}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

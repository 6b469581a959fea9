"""Where the installed files of geoloc_ros are (config/, maps/, launch/): the package's ament index share
directory when geoloc_ros is installed as a ROS package (colcon, or the environment script registering it), else
the share directory a pip or colcon install writes beside the package (<prefix>/share/geoloc_ros, setup.py's
data_files; found with AMENT_PREFIX_PATH unset too), else the source tree this module sits in (an editable install
or a plain checkout). One home for that question, so nothing else guesses with Path(__file__).parents[...], which
breaks in a non-editable install."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
import sys

PACKAGE = "geoloc_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the repository root when running from a checkout
# <prefix>/lib/pythonX.Y/site-packages/geoloc_ros/resources.py -> <prefix>: a pip --prefix or --user install, or a
# colcon install whose setup script was not sourced
_HERE = Path(__file__).resolve()
INSTALL_PREFIX = _HERE.parents[min(4, len(_HERE.parents) - 1)]


@lru_cache(maxsize=1)
def share_dir() -> Path | None:
    """share/geoloc_ros from the ament index, else <prefix>/share/geoloc_ros where a pip or colcon install put it
    (the prefix this module is installed under, then the interpreter's), or None. The index is skipped, not
    fatal, when there is none to ask (AMENT_PREFIX_PATH unset or empty: an activated venv, a plain pip install, a
    bare shell; ament_index_python raises OSError then)."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        get_package_share_directory = None
    if get_package_share_directory is not None:
        try:
            return Path(get_package_share_directory(PACKAGE))
        except (PackageNotFoundError, ValueError, LookupError, OSError):
            pass
    for prefix in (INSTALL_PREFIX, Path(sys.prefix)):
        installed = prefix / "share" / PACKAGE
        if (installed / "package.xml").is_file():
            return installed
    return None


def resource(*parts: str) -> Path:
    """An installed file or directory (e.g. resource("maps", "nordland_demo")): the share directory's copy when
    it exists there, else the source tree's. The source tree's path is returned when neither exists, so the
    caller's error names a path a developer recognises."""
    share = share_dir()
    if share is not None and share.joinpath(*parts).exists():
        return share.joinpath(*parts)
    return SOURCE_ROOT.joinpath(*parts)

"""Installed-file lookup (geoloc_ros.resources) and the one stamp conversion (geoloc_ros.stamps)."""

from types import SimpleNamespace

from geoloc_ros import resources
from geoloc_ros.stamps import set_stamp, stamp_ns


def test_resource_finds_shipped_files_in_the_share_directory_or_the_source_tree():
    for parts in (("config", "vpr.yaml"), ("launch", "vpr.launch.py"), ("maps", "nordland_demo", "manifest.json")):
        path = resources.resource(*parts)
        assert path.is_file(), path
        share = resources.share_dir()
        assert path == (share.joinpath(*parts) if share is not None and share.joinpath(*parts).exists()
                        else resources.SOURCE_ROOT.joinpath(*parts))
    # A file in neither place: the source tree's path, so an error names a path a developer recognises.
    assert resources.resource("no", "such.file") == resources.SOURCE_ROOT / "no" / "such.file"


def test_stamp_round_trip():
    t = SimpleNamespace(sec=0, nanosec=0)
    assert stamp_ns(t) == 0
    set_stamp(t, 1_700_000_000_123_456_789)
    assert (t.sec, t.nanosec) == (1_700_000_000, 123_456_789) and stamp_ns(t) == 1_700_000_000_123_456_789

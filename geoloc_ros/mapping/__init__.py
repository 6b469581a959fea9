"""geoloc_ros.mapping: the map database (on-disk format, FAISS search) and its builders. No ROS imports.

    from geoloc_ros.mapping import MapDatabase, Keyframe, Match, MapError
    db = MapDatabase.load(path, encoder=None)     # verifies checksums, format, dim/fingerprint against encoder
    db = MapDatabase.create(name, dim, fingerprint, frame=None, index_factory="Flat")
    ids = db.add(descriptors, keyframes)          # incremental
    db.search(descriptors, k, near=(x, y, radius_m))  # -> per query: list[Match], best first
    db.keyframe(id), db.save(path)                # save is atomic

See docs/maps.md for the directory format.
"""

from geoloc_ros.mapping.database import MapDatabase
from geoloc_ros.mapping.keyframe import Keyframe, Match, heading_from_quaternion, quaternion_from_heading
from geoloc_ros.mapping.storage import FORMAT_VERSION, MapError

__all__ = ["FORMAT_VERSION", "Keyframe", "MapDatabase", "MapError", "Match", "heading_from_quaternion",
           "quaternion_from_heading"]

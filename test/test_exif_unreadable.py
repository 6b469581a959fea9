"""`geoloc map build` from a folder of EXIF-geotagged photos skips and counts the files it cannot read (a
truncated JPEG, a decompression bomb), as the other layouts do, instead of aborting (docs/maps.md)."""

from __future__ import annotations

import shutil
import struct
import zlib

import pytest

from geoloc_ros.cli import main as geoloc
from geoloc_ros.datasets import UnreadableImage, exif_gps, load_dataset
from geoloc_ros.mapping import MapDatabase
from geoloc_ros.model import save_encoder
from geoloc_ros.model.testing import tiny_encoder


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (8-bit RGB) with a few bytes of image data: Pillow refuses it on
    open as a decompression bomb (over twice Image.MAX_IMAGE_PIXELS), before decoding anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def exif_folder(tmp_path, shared_data):
    folder = tmp_path / "photos"
    folder.mkdir()
    source = shared_data / "geometry" / "lund_street"
    for name in ("01.jpg", "02.jpg", "03.jpg"):
        shutil.copy(source / name, folder / name)
    (folder / "00_truncated.jpg").write_bytes((source / "04.jpg").read_bytes()[:5000])  # first in name order
    (folder / "99_bomb.png").write_bytes(png_claiming(30000, 30000))
    return folder


def test_unreadable_files_of_an_exif_folder_are_refused_by_name(exif_folder):
    for name in ("00_truncated.jpg", "99_bomb.png"):
        with pytest.raises(UnreadableImage, match=name):
            exif_gps(exif_folder / name)
    with pytest.raises(UnreadableImage, match="DecompressionBombError"):
        exif_gps(exif_folder / "99_bomb.png")
    unreadable = []
    images = load_dataset(exif_folder, unreadable=unreadable)
    assert [g.label for g in images] == ["01.jpg", "02.jpg", "03.jpg"] and len(unreadable) == 2
    with pytest.raises(ValueError, match="00_truncated.jpg"):  # without the list: an error naming the file
        load_dataset(exif_folder)


def test_map_build_skips_and_counts_unreadable_exif_photos(exif_folder, tmp_path, capsys):
    encoder = save_encoder(tiny_encoder(dim=32), tmp_path / "enc")
    args = ["map", "build", "--encoder", str(encoder), "--images", str(exif_folder), "--quiet", "--device", "cpu",
            "--local-features", "none"]
    assert geoloc(args + ["--out", str(tmp_path / "map")]) in (None, 0)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "00_truncated.jpg" in err and "99_bomb.png" in err
    db = MapDatabase.load(tmp_path / "map")
    assert list(db.column("label")) == ["01.jpg", "02.jpg", "03.jpg"] and all(k.has_geotag for k in db.keyframes())
    with pytest.raises(SystemExit, match="--strict: 2 unreadable"):
        geoloc(args + ["--out", str(tmp_path / "strict"), "--strict"])
    assert not (tmp_path / "strict").exists()

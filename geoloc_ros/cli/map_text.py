"""`geoloc map build|add` options for keyframe address / caption text (docs/language.md).

Sources, applied in this order (a later one overrides an earlier one's field): the image CSV's `address` /
`caption` columns (always looked for; --address-column / --caption-column name other columns and make them
required), a bag's std_msgs/String topics (--address-topic / --caption-topic: the message nearest the keyframe's
stamp within --text-max-gap seconds), and an address table (--address-table FILE.geojson|FILE.csv: the polygon
holding the keyframe's position, else the nearest point within --address-radius metres).
"""

from __future__ import annotations

import math
from pathlib import Path


def add_args(p):
    g = p.add_argument_group("address and caption text (docs/language.md)")
    g.add_argument("--address-column", help="CSV column of the keyframe address (default: 'address' when present)")
    g.add_argument("--caption-column", help="CSV column of the keyframe caption (default: 'caption' when present)")
    g.add_argument("--address-topic", help="a bag's std_msgs/String topic with the address (nearest stamp)")
    g.add_argument("--caption-topic", help="a bag's std_msgs/String topic with a caption (nearest stamp)")
    g.add_argument("--text-max-gap", type=float, default=2.0, metavar="SECONDS",
                   help="largest stamp difference for a topic's text to apply to a keyframe (default 2 s)")
    g.add_argument("--address-table", metavar="FILE", help="GeoJSON (Point / Polygon features with an 'address' "
                                                           "property) or CSV (lat,lon,address) matched by position")
    g.add_argument("--address-radius", type=float, default=30.0, metavar="METRES",
                   help="nearest address point within this distance (default 30 m; polygons match by containment)")
    g.add_argument("--address-property", default="address", help="GeoJSON property / CSV column of the address")
    g.add_argument("--descriptions", metavar="FILE.csv", help="scene descriptions as captions (`geoloc describe`'s "
                                                              "CSV: image,caption); an encoder with a feature "
                                                              "combiner fuses them into the descriptors")


def prepare(args) -> dict:
    """Builder options ({"annotate": callable} or {}) for the text options of `args`; SystemExit on bad input."""
    from geoloc_ros.language import annotate as text

    try:
        annotators = [_csv_annotator(args, text)]
        bag = getattr(args, "bag", None)
        for field in ("address", "caption"):
            topic = getattr(args, f"{field}_topic", None)
            if topic and not bag:
                raise SystemExit(f"geoloc map: --{field}-topic needs --bag")
            if topic:
                annotators.append(text.nearest_stamp_annotator(text.bag_strings(bag, topic), field,
                                                               args.text_max_gap))
        if getattr(args, "descriptions", None):
            annotators.append(text.label_annotator(text.csv_text(args.descriptions, None, "caption")))
        if getattr(args, "address_table", None):
            table = text.read_address_table(args.address_table, args.address_radius, args.address_property)
            annotators.append(table.annotator())
    except text.AnnotationError as e:
        raise SystemExit(f"geoloc map: {e}") from None
    annotate = text.chain(annotators)
    return {"annotate": annotate} if annotate is not None else {}


def _csv_annotator(args, text):
    images = getattr(args, "images", None)
    explicit = {"address": getattr(args, "address_column", None), "caption": getattr(args, "caption_column", None)}
    is_csv = bool(images) and Path(images).is_file() and Path(images).suffix.lower() == ".csv"
    if not is_csv:
        if any(explicit.values()):
            raise SystemExit("geoloc map: --address-column / --caption-column need --images FILE.csv")
        return None
    with open(images, newline="") as f:
        header = [h.strip().lower() for h in f.readline().split(",")]
    columns = {field: name or (field if field in header else None) for field, name in explicit.items()}
    if not any(columns.values()):
        return None
    return text.label_annotator(text.csv_text(images, columns["address"], columns["caption"]))


def run_text_query(args, db, load_encoder):
    """`geoloc map query MAP --text ...`: prints which method answered, then the places."""
    from geoloc_ros.language.text_search import TextSearch, text_search_for
    from geoloc_ros.localization.snapshot import map_id

    maps = [(map_id(args.map), db.name, db)]
    checkpoint = args.encoder or db.encoder_path
    if checkpoint is None:
        search = TextSearch(maps, None, "the map carries no encoder and no --encoder was given")
    else:
        search = text_search_for(maps, load_encoder(checkpoint, args.device), checkpoint)
    answer = search.find(args.text, args.k)
    print(f"method: {answer.method or 'none'} ({answer.message})")
    if not answer.success:
        raise SystemExit(f"geoloc map: {answer.message}")
    if not answer.places:
        print("  (no places)")
    for c in answer.places:
        k = c.keyframe
        where = f"lat {k.lat:.6f} lon {k.lon:.6f}" if math.isfinite(k.lat) else "no geotag"
        print(f"  {c.rank + 1}. score {c.similarity:.4f}  id {k.id}  {k.label}  x {k.x:.1f} y {k.y:.1f}  {where}"
              f"  address {k.address!r}" + (f"  caption {k.caption!r}" if k.caption else ""))

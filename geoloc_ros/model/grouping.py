"""CosPlace grouping (Berton et al., CVPR 2022; gmberton/CosPlace datasets/train_dataset.py).

Each image goes to a class: its UTM cell of M x M metres and its heading bin of alpha degrees. Classes are split
into N x N x L groups by (cell_east mod N, cell_north mod N, heading_bin mod L), so two classes in the same group
are at least N cells (N*M metres) or L heading bins apart: neighbouring cells never share a group. Training
visits one group per epoch, each with its own classifier.

Published defaults: M=10 m, alpha=30 deg, N=5, L=2, min_images_per_class=10, groups_num=8 (ProGEO parser.py,
same as CosPlace).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
import math

COSPLACE_DEFAULTS = {"M": 10, "alpha": 30, "N": 5, "L": 2, "min_images_per_class": 10, "groups_num": 8}


def class_and_group(east: float, north: float, heading: float, M: float, alpha: float, N: int, L: int):
    """(class_id, group_id) of one image, as CosPlace's get__class_id__group_id. NaN heading counts as 0."""
    if heading is None or (isinstance(heading, float) and math.isnan(heading)):
        heading = 0.0
    heading = heading % 360.0
    ce, cn, ch = int(math.floor(east / M)), int(math.floor(north / M)), int(math.floor(heading / alpha))
    class_id = (ce * M, cn * M, ch * alpha)
    group_id = (ce % N, cn % N, ch % L)
    return class_id, group_id


@dataclass
class Group:
    group_id: tuple
    classes: list  # class ids, sorted
    images: list  # per class, a sorted list of record indices

    def __len__(self):
        return len(self.classes)

    @property
    def images_num(self) -> int:
        return sum(len(v) for v in self.images)


def make_groups(records, M=10, alpha=30, N=5, L=2, min_images_per_class=10, groups_num=None) -> list[Group]:
    """Groups of classes from GeoImage-like records (utm_east, utm_north, heading). Classes with fewer than
    `min_images_per_class` images are dropped; empty groups are dropped; groups are ordered by decreasing size
    (ties by group id) and the first `groups_num` kept (CosPlace keeps groups in discovery order; sorting makes
    the choice deterministic)."""
    per_class = defaultdict(list)
    group_of = {}
    for i, r in enumerate(records):
        if math.isnan(r.utm_east) or math.isnan(r.utm_north):
            raise ValueError(f"{r.path}: no position; CosPlace grouping needs UTM coordinates")
        cid, gid = class_and_group(r.utm_east, r.utm_north, r.heading, M, alpha, N, L)
        per_class[cid].append(i)
        group_of[cid] = gid
    per_group = defaultdict(list)
    for cid, idx in per_class.items():
        if len(idx) >= min_images_per_class:
            per_group[group_of[cid]].append(cid)
    groups = [Group(gid, sorted(cids), [sorted(per_class[c]) for c in sorted(cids)])
              for gid, cids in per_group.items()]
    groups.sort(key=lambda g: (-len(g), g.group_id))
    if groups_num is not None:
        groups = groups[:groups_num]
    if not groups:
        raise ValueError(f"no class has >= {min_images_per_class} images with M={M} m, alpha={alpha} deg; "
                         f"lower min_images_per_class or raise M")
    return groups

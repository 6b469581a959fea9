"""The lifecycle node geoloc_vpr (executable vpr_node): not implemented yet."""


def main(args=None):
    raise SystemExit("vpr_node: not implemented yet")

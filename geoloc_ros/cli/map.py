"""`geoloc map`: not implemented yet."""


def add_parser(sub):
    p = sub.add_parser("map", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("geoloc map: not implemented yet")

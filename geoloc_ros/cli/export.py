"""`geoloc export`: not implemented yet."""


def add_parser(sub):
    p = sub.add_parser("export", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("geoloc export: not implemented yet")

"""`geoloc demo`: not implemented yet."""


def add_parser(sub):
    p = sub.add_parser("demo", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("geoloc demo: not implemented yet")

"""`geoloc bench`: not implemented yet."""


def add_parser(sub):
    p = sub.add_parser("bench", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("geoloc bench: not implemented yet")

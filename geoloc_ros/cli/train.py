"""`geoloc train`: not implemented yet."""


def add_parser(sub):
    p = sub.add_parser("train", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args):
    raise SystemExit("geoloc train: not implemented yet")

"""`python -m geoloc_ros.cli ARGS`: the `geoloc` command without its console script."""

import sys

from geoloc_ros.cli import main

sys.exit(main())

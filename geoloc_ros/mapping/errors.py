"""The one error type of geoloc_ros.mapping (here so that every mapping module can raise it)."""


class MapError(ValueError):
    """A map that cannot be used; the message names the file and the reason."""

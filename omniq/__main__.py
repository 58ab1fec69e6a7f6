"""``python -m omniq``: the same as the ``omniq`` command."""

from .cli import entry_point

entry_point()

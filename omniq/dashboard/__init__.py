"""OmniQ's web dashboard, an optional extra: ``pip install 'omniq[dashboard]'``.

``omniq dashboard`` runs it; ``create_app(Settings(backend))`` gives the ASGI app to mount in a
server of your own. Screens: overview, tasks, task detail, schedules, workers; live over
Server-Sent Events fed by one LISTEN connection; actions as POSTs with CSRF; ``/metrics``.
"""

from .app import Settings, create_app
from .security import Access, ConfigurationError

__all__ = ["Access", "ConfigurationError", "Settings", "create_app"]

"""The monitoring dashboard and web test client (``dimint web``); see ``dimint.real.web.app``."""

from dimint.real.web.app import create_app, serve

__all__ = ["create_app", "serve"]

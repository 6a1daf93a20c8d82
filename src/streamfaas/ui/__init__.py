"""The web UI: a functions page with live streaming invoke, and a chat page that reads SSE."""

from __future__ import annotations

from ._routes import STATIC_DIR, add_ui_routes

__all__ = ["STATIC_DIR", "add_ui_routes"]

"""How the CLI shows things on a terminal: whether to colour, and (from :mod:`supervisor.control.table`, which
the daemon also draws the status table with) the table, state colours, durations and cleaned text.

Standard library only, and little of it, so that ``qasup status`` starts fast.
"""

from __future__ import annotations

import os

from supervisor.control.table import clean_text, format_duration, last_error, paint, render_status

TYPE_CHECKING = False  # typing costs ~5 ms to import; annotations are strings here anyway
if TYPE_CHECKING:
    from typing import Any

__all__ = ["clean_text", "format_duration", "last_error", "paint", "render_status", "use_colour"]


def use_colour(stream: Any) -> bool:
    """Whether to colour output to ``stream``: a terminal, unless ``NO_COLOR`` is set or ``TERM`` is dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False

"""``qasup status --watch``: the status table drawn again in place every second, and at once when a service
changes state (the daemon's event stream, read by a thread; at most ten frames a second), until Ctrl-C.

Plain ANSI (cursor home, clear the screen), no curses. Ctrl-C ends it quietly with exit code 130; a daemon that
goes away ends it with the usual "no daemon" message and exit code 4.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from supervisor.cli.render import render_status, use_colour
from supervisor.control import client
from supervisor.protocol import Exit

CLEAR = "\x1b[H\x1b[2J"    # cursor home, then clear the screen
PERIOD = 1.0
MIN_FRAME = 0.1            # at most ten frames a second, however fast events come

__all__ = ["CLEAR", "MIN_FRAME", "PERIOD", "watch_status"]


def _follow_events(socket_path: str, changed: threading.Event) -> None:
    """Set ``changed`` at every event of the daemon (a thread; it ends with the stream, the frames go on)."""
    try:
        for _ in client.stream_lines(socket_path, "/v1/events"):
            changed.set()
    except Exception:   # the table still comes every second
        return


def watch_status(socket_path: str, path: str, *, show_disabled: bool, as_status: Callable[[Any], Any]) -> int:
    """Draw the table of ``GET path`` every :data:`PERIOD` seconds and at each event; returns only on an error
    (Ctrl-C raises KeyboardInterrupt)."""
    out = sys.stdout
    colour = use_colour(out)
    changed = threading.Event()
    threading.Thread(target=_follow_events, args=(socket_path, changed), daemon=True,
                     name="qasup-watch-events").start()
    while True:
        status, payload = client.request(socket_path, "GET", path)
        if status != 200 or not isinstance(payload, dict):
            error = payload.get("error") if isinstance(payload, dict) else payload
            print(f"qasup: {error!s}", file=sys.stderr)
            return Exit.FAILED
        width = shutil.get_terminal_size().columns if out.isatty() else None
        table = render_status(as_status(payload), colour=colour, width=width, show_disabled=show_disabled)
        out.write(f"{CLEAR}{table}\n\n(every {PERIOD:g}s, {time.strftime('%H:%M:%S')}; Ctrl-C to quit)\n")
        out.flush()
        time.sleep(MIN_FRAME)
        changed.wait(PERIOD - MIN_FRAME)
        changed.clear()

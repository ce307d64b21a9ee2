"""The status page served at ``GET /`` by the read-only listener: one self-contained HTML file
(``status_page.html`` beside this module: plain JavaScript and CSS inline, no CDN, no build step).

The page reads ``/v1/status?plan=1`` once, then follows ``/v1/events`` with a streaming ``fetch`` reader: each
event updates its service's row at once, and a status call follows (at most one a second, only while events
come) for what events do not carry (restarts, last errors, the stack's state). When nothing changes, the page
sends nothing and the daemon does nothing. When the stream ends (the daemon stopped or restarted) it
reconnects, backing off up to 3 s, and reads the status again. Every text from the daemon is set as text, never
as markup, and the Content-Security-Policy allows only the page's own script and style (by their hashes) and
requests to this origin.

The file is read (and its hashes computed) at the first request, so a daemon without ``--http`` holds none of it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

__all__ = ["PAGE_FILE", "page_answer"]

PAGE_FILE = "status_page.html"


def _hash(body: str) -> str:
    import base64  # here: the page costs nothing to a daemon that never serves it
    import hashlib  # (the built-in sha256 where lazyssl hides OpenSSL's)

    return "'sha256-" + base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii") + "'"


@functools.cache
def page_answer() -> tuple[bytes, tuple[tuple[str, str], ...]]:
    """The page's bytes and the headers to send with them (its Content-Security-Policy among them)."""
    # beside this module (installed as package data); importlib.resources would cost ~1 MiB of imports
    text = Path(__file__).with_name(PAGE_FILE).read_text(encoding="utf-8")
    scripts = " ".join(_hash(m) for m in re.findall(r"<script>(.*?)</script>", text, re.S))
    styles = " ".join(_hash(m) for m in re.findall(r"<style>(.*?)</style>", text, re.S))
    policy = (f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; img-src data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = (("Content-Security-Policy", policy), ("X-Content-Type-Options", "nosniff"),
               ("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY"))
    return text.encode("utf-8"), headers

"""Sizes shared by the log pipeline's modules (capture, scan, echo, follow)."""

from __future__ import annotations

from typing import Final

READ_SIZE: Final = 1 << 20          # largest single read from a pipe or a followed file
MAX_LINE: Final = 64 * 1024         # default cap on a buffered unterminated line

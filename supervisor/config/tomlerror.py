"""Where a TOML syntax error is: tomllib's message turned into a line and a column.

Python 3.11's ``tomllib`` puts the place in its message (``... (at line 2, column 11)``), and for input that
ends inside a construct only says ``(at end of document)``. There the useful place is where that construct began
(the ``[`` of an unclosed array, the ``{`` of an inline table, the quotes of a string, a table header's ``[``):
:func:`locate` finds it with a small scanner that knows TOML's strings and comments.
"""

from __future__ import annotations

import re

__all__ = ["locate"]

_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_AT_END = re.compile(r"\s*\(at end of document\)$")

_WHAT = {"[": "array", "{": "inline table", '"': "string", "'": "string", '"""': "string", "'''": "string",
         "header": "table header"}


def locate(text: str, message: str) -> tuple[int, int, str]:
    """``(line, column, message)`` for tomllib's ``message`` about ``text`` (1-based; the place is taken out of
    the message). At the end of the document, the place where the unclosed construct began, said in the message."""
    m = _AT.search(message)
    if m:
        return int(m.group(1)), int(m.group(2)), message[: m.start()]
    m = _AT_END.search(message)
    bare = message[: m.start()] if m else message
    opened = _unclosed(text)
    if opened is None:
        lines = text.split("\n")
        return len(lines), len(lines[-1]) + 1, f"{bare} at the end of the file"
    line, col, kind = opened
    return line, col, f"{bare}: the {_WHAT[kind]} that begins here is never closed"


def _unclosed(text: str) -> tuple[int, int, str] | None:
    """The innermost construct still open at the end of ``text``: (line, column, opener)."""
    stack: list[tuple[int, int, str]] = []
    i, n = 0, len(text)
    line, line_start = 1, 0
    at_line_start = True
    while i < n:
        c = text[i]
        col = i - line_start + 1
        if c == "\n":
            if stack and stack[-1][2] == "header":
                return stack[-1]            # a header must close on its own line
            line, line_start, at_line_start = line + 1, i + 1, True
            i += 1
            continue
        if c in " \t\r":
            i += 1
            continue
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if c in "\"'":
            quote = text[i:i + 3] if text.startswith(c * 3, i) else c
            start = (line, col, quote)
            j = i + len(quote)
            while True:
                if j >= n:
                    return start
                if quote == '"' and text[j] == "\\" or quote == '"""' and text[j] == "\\":
                    j += 2
                    continue
                if text.startswith(quote, j):
                    j += len(quote)
                    break
                if text[j] == "\n":
                    if len(quote) == 1:
                        return start        # a one-line string cannot span lines
                    line, line_start = line + 1, j + 1
                j += 1
            i = j
            at_line_start = False
            continue
        if c == "[" and at_line_start and not stack:
            stack.append((line, col, "header"))
            i += 2 if text.startswith("[[", i) else 1
            at_line_start = False
            continue
        if c in "[{":
            stack.append((line, col, c))
        elif c in "]}":
            if stack:
                stack.pop()
            if text.startswith("]]", i) and not stack:
                i += 1
        at_line_start = False
        i += 1
    return stack[-1] if stack else None

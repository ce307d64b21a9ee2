"""Scan log output for a service's patterns: `PatternSet` (all patterns compiled once) and `LineScanner`.

Patterns are scanned over whole chunks of complete lines with Hyperscan where it takes them, else with
RE2 (one alternation of all the others), so Python work happens only where a pattern matched; a
candidate line is confirmed with the pattern's own RE2 translation on that line alone, so the
semantics are those of Python's `re.search` per line (see `supervisor.config.patterns`).  Both engines
run in linear time: no pattern and no line can stall the event loop, and Python `re` never runs a
unit's pattern, except to find a single literal marker (linear too).  Hyperscan is imported only
when a `PatternSet` needs it: one literal marker is found with `re`, as fast, without Hyperscan's
resident memory.  A `LineScanner` feeds one byte stream to a `PatternSet` (one scanner per stream:
it keeps a partial line), with bounded memory for lines without a newline.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, Final, Protocol

from supervisor.config.patterns import (
    PYTHON_ONLY,
    Re2Regex,
    can_match_empty,
    chunk_source,
    compile_line_pattern,
    hyperscan_source,
    is_literal,
    re2_compile,
    re2_unanchored,
)

from .limits import MAX_LINE

_HS_PAD: Final = 16
_HS_CACHE_SIZE: Final = 64
_HS_CACHE: dict[tuple[tuple[int, bytes], ...], tuple[Any, tuple[int, ...], dict[int, str]]] = {}
"""Compiled databases by their sources (each service compiles its rules once, and services with the same rules
share one); a database is only read by scans, all on the event loop's thread. Bounded (oldest out)."""
_NL: Final = b"\n"


class _HyperscanDatabase(Protocol):
    """The part of `hyperscan.Database` used here (the module has no type stubs)."""

    def scan(self, data: bytes | memoryview, *,
             match_event_handler: Callable[[int, int, int, int, object], None]) -> None: ...


class PatternSet:
    """All log patterns of one service, compiled once; the index in `patterns` is the pattern id.

    Semantics are exactly those of Python `re.search` on each line (bytes, without its newline), run
    in linear time: Hyperscan and chunk-wide RE2 find candidate lines fast, and a candidate is
    confirmed with the pattern's RE2 translation on that line alone.  A pattern never matches
    across lines.  A pattern no linear-time engine can run raises `PatternError` (`qasup check`
    refuses it first).

    `engine` is "hyperscan" (the rest, if any, with RE2), "re2" (Hyperscan not importable, or
    asked for), "re" (a single literal marker, found with `re`) or "none" (no patterns);
    `fallback` lists the ids scanned without Hyperscan and `fallback_reasons` says why (Hyperscan's
    own message, empty matches, a `$` before the end...).
    """

    def __init__(self, patterns: Sequence[str | bytes], *, engine: str = "auto") -> None:
        if engine not in ("auto", "hyperscan", "re2"):
            raise ValueError(f"engine must be auto, hyperscan or re2, not {engine!r}")
        self.patterns: tuple[str | bytes, ...] = tuple(patterns)
        self._lines = [compile_line_pattern(p) for p in self.patterns]
        sources = [chunk_source(lp.pattern) for lp in self._lines]
        self.fallback_reasons: dict[int, str] = {}
        self._db: _HyperscanDatabase | None = None
        self._literal: re.Pattern[bytes] | None = None
        hs_ids: list[int] = []
        if not self.patterns:
            self.engine = "none"
        elif engine == "re2":
            self.engine = "re2"
            self.fallback_reasons = {i: "re2 engine requested" for i in range(len(sources))}
        elif engine == "auto" and len(self.patterns) == 1 and is_literal(self._lines[0].pattern):
            # One literal marker (`Starting worker`, `^READY `): `re` finds it at memchr-like speed (a
            # literal search is linear), and loading Hyperscan would cost every daemon ~5 MiB for nothing.
            self.engine = "re"
            self.fallback_reasons = {0: "a single literal pattern: re is as fast"}
            # find candidates unanchored (fast); lines are confirmed anchored
            self._literal = re.compile(sources[0].removeprefix(b"^"), re.MULTILINE)
        else:
            try:
                import hyperscan
            except ImportError:
                if engine == "hyperscan":
                    raise
                self.engine = "re2"
                self.fallback_reasons = {i: "hyperscan is not installed" for i in range(len(sources))}
            else:
                self.engine = "hyperscan"
                hs_ids = self._compile_hyperscan(hyperscan, sources)
        self.fallback: tuple[int, ...] = tuple(sorted(self.fallback_reasons))
        self._re2_ids: tuple[int, ...] = () if self._literal is not None else self.fallback
        self._re2 = self._chunk_regex(self._re2_ids)
        if self.engine == "hyperscan" and not hs_ids:
            self.engine = "re2"  # every pattern fell back: nothing is left for Hyperscan

    def _chunk_regex(self, ids: tuple[int, ...]) -> list[tuple[tuple[int, ...], Re2Regex]]:
        """What finds candidate lines for the RE2 patterns: one alternation of them all (a single pass
        over a chunk however many there are), or one regex each if the alternation is too big."""
        if len(ids) == 1:
            return [(ids, self._lines[ids[0]].regex)]
        if ids:
            union, _err = re2_compile(b"(?m)" + b"|".join(b"(?:" + self._lines[i].re2_body + b")" for i in ids))
            if union is not None:
                return [(ids, union)]
        return [((i,), self._lines[i].regex) for i in ids]

    def _compile_hyperscan(self, hs: ModuleType, sources: list[bytes]) -> list[int]:
        """Compile the patterns Hyperscan accepts into one block-mode database: all at once (one compile, the
        common case), each alone only when that fails, to find the ones it refuses. A database is shared by
        every set of the same sources (services with the same rules, each restart of a service)."""
        hs_sources: dict[int, bytes] = {}
        for i, src in enumerate(sources):
            unsafe = next((s for s in PYTHON_ONLY if s in src), None)
            if unsafe is not None:
                self.fallback_reasons[i] = f"{unsafe.decode()!r} means something else to Hyperscan"
                continue
            hs_src = hyperscan_source(src)
            if hs_src is None:
                self.fallback_reasons[i] = "'$' before the end of the pattern (Hyperscan misses some of those matches)"
                continue
            if can_match_empty(self._lines[i].python):
                self.fallback_reasons[i] = "can match an empty string, which Hyperscan never reports"
                continue
            hs_sources[i] = hs_src
        key = tuple(hs_sources.items())
        cached = _HS_CACHE.get(key)
        if cached is not None:
            self._db, known, known_refused = cached
            self.fallback_reasons.update(known_refused)
            return list(known)
        accepted = list(hs_sources)
        refused: dict[int, str] = {}
        db = self._hs_database(hs, accepted, hs_sources) if accepted else None
        if db is None and accepted:   # some pattern is refused: find which, alone
            ok = []
            for i in accepted:
                try:
                    self._hs_database(hs, [i], hs_sources, raise_errors=True)
                except hs.error as exc:
                    refused[i] = str(exc) or type(exc).__name__
                else:
                    ok.append(i)
            accepted = ok
            db = self._hs_database(hs, accepted, hs_sources, raise_errors=True) if accepted else None
        if len(_HS_CACHE) >= _HS_CACHE_SIZE:
            _HS_CACHE.pop(next(iter(_HS_CACHE)))
        _HS_CACHE[key] = (db, tuple(accepted), refused)
        self.fallback_reasons.update(refused)
        self._db = db
        return accepted

    @staticmethod
    def _hs_database(hs: ModuleType, ids: list[int], hs_sources: dict[int, bytes],
                     raise_errors: bool = False) -> _HyperscanDatabase | None:
        db = hs.Database(mode=hs.HS_MODE_BLOCK)
        try:
            db.compile(expressions=[hs_sources[i] for i in ids], ids=ids,
                       flags=[hs.HS_FLAG_MULTILINE] * len(ids))
        except hs.error:
            if raise_errors:
                raise
            return None
        return db

    def line_matches(self, pattern_id: int, line: bytes) -> bool:
        """Whether pattern `pattern_id` matches `line` (the reference semantics, in linear time)."""
        return self._lines[pattern_id].search(line)

    def scan(self, data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
        """Matches in `data[start:end]`, a run of complete lines (the last may lack its newline;
        `start` must be 0 or just after a newline): a list of (pattern_id, line_start, line_end)
        as offsets into `data`, line_end excluding the newline, ordered by line then id, each
        (pattern, line) pair once.  Nothing is copied: callers scan inside a read buffer."""
        stop = len(data) if end is None else end
        if self.engine == "none" or start >= stop:
            return []
        hits: list[tuple[int, int, int]] = []
        if self._db is not None:
            hits.extend(self._scan_hyperscan(self._db, data, start, stop))
        if self._literal is not None:
            hits.extend(self._scan_literal(self._literal, data, start, stop))
        for ids, regex in self._re2:
            hits.extend(self._scan_re2(ids, regex, data, start, stop))
        if len(hits) > 1:
            hits.sort(key=lambda hit: (hit[1], hit[0]))
        return hits

    def _scan_hyperscan(self, db: _HyperscanDatabase, data: bytes, lo: int, hi: int) -> list[tuple[int, int, int]]:
        ends: list[tuple[int, int]] = []
        add = ends.append

        def on_match(pattern_id: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
            add((pattern_id, end))

        # Hyperscan 5.4 (the PyPI wheel) misses some matches that end at or next to the end of
        # the buffer in multi-pattern databases, so the lines are always followed by padding:
        # real bytes of the chunk where there are enough, else a padded copy.
        terminated = data[hi - 1] == 0x0A
        if terminated and len(data) - hi >= _HS_PAD:
            end_at = hi + _HS_PAD
            buffer = data if lo == 0 and end_at == len(data) else memoryview(data)[lo:end_at]
        else:
            buffer = data[lo:hi] + (_NL if not terminated else b"") + _NL * _HS_PAD
        db.scan(buffer, match_event_handler=on_match)
        # a match ending on the newline after an unterminated last line still belongs to it
        limit = hi if terminated else hi + 1
        if not ends:
            return []
        hits: list[tuple[int, int, int]] = []
        current: dict[int, tuple[int, int]] = {}  # pattern id -> the line its last end fell in
        seen: set[tuple[int, int]] = set()
        lines = self._lines
        for pattern_id, end in ends:
            pos = lo + (end - 1 if end > 0 else 0)
            if pos >= limit:
                continue  # in the padding
            line = current.get(pattern_id)
            if line is not None and line[0] <= pos < line[1]:
                continue  # another end offset on a line already handled for this pattern
            start = max(lo, data.rfind(_NL, lo, pos) + 1)
            stop = data.find(_NL, pos, hi)
            if stop < 0:
                stop = hi
            current[pattern_id] = (start, stop)
            if (pattern_id, start) in seen:
                continue
            seen.add((pattern_id, start))
            if lines[pattern_id].search(data[start:stop]):
                hits.append((pattern_id, start, stop))
        return hits

    def _scan_re2(self, ids: tuple[int, ...], regex: Re2Regex, data: bytes,
                  lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Leftmost search over the chunk (RE2, GIL released), then jump to the next line: the first
        chunk-wide match at or after a line start starts no later than any line-level match of any
        of `ids`, so no line is skipped; the line it starts in is then checked for each of `ids`."""
        # RE2 sees exactly the region, so `$` matches at its end and `^` `\b` at its start
        view: bytes | memoryview = data if lo == 0 and hi == len(data) else memoryview(data)[lo:hi]
        size = hi - lo
        # a match starting at `hi` belongs to a line only when the region ends without a newline
        limit = size if data[hi - 1] == 0x0A else size + 1
        anchor = re2_unanchored()
        lines = self._lines
        single = len(ids) == 1
        hits: list[tuple[int, int, int]] = []
        pos = 0
        while pos < limit:
            begin, finish = regex.Match(anchor, view, pos, size)[0]
            if begin < 0 or begin >= limit:
                break
            at = lo + begin
            start = max(lo, data.rfind(_NL, lo, at) + 1)
            stop = data.find(_NL, at, hi)
            if stop < 0:
                stop = hi
            if single and lo + finish <= stop:
                hits.append((ids[0], start, stop))  # the match lies inside the line: it is the line's
            else:
                line = data[start:stop]
                hits.extend((i, start, stop) for i in ids if lines[i].search(line))
            pos = stop + 1 - lo
        return hits

    def _scan_literal(self, literal: re.Pattern[bytes], data: bytes,
                      lo: int, hi: int) -> list[tuple[int, int, int]]:
        """The single literal marker: the same walk as `_scan_re2`, with `re`'s literal search, which is
        Python's own reading of the pattern: a find inside one line (at its start, for `^`) is a match."""
        anchored = self._lines[0].pattern.startswith(b"^")
        limit = hi if data[hi - 1] == 0x0A else hi + 1
        hits: list[tuple[int, int, int]] = []
        pos = lo
        while pos < limit:
            m = literal.search(data, pos, hi)
            if m is None or m.start() >= limit:
                break
            begin = m.start()
            start = max(lo, data.rfind(_NL, lo, begin) + 1)
            stop = data.find(_NL, begin, hi)
            if stop < 0:
                stop = hi
            if m.end() <= stop and (begin == start or not anchored):
                hits.append((0, start, stop))
            pos = stop + 1
        return hits


class LineScanner:
    """Feeds a byte stream, chunk by chunk, to a `PatternSet`, line-aware across chunk borders.

    Complete lines are scanned in one go per chunk; the unterminated rest waits for the next chunk
    (at most `max_line` bytes: a longer line is scanned in `max_line` pieces, each then counting as
    a line, so a 50 MB line without a newline costs bounded memory).  For each match,
    `on_match(pattern_id, line, context)` gets the line without its newline and up to
    `context_lines` lines before it (oldest first), which may come from earlier chunks.
    """

    def __init__(
        self,
        patterns: PatternSet,
        on_match: Callable[[int, bytes, list[bytes]], None],
        context_lines: int = 5,
        max_line: int = MAX_LINE,
    ) -> None:
        if max_line < 1:
            raise ValueError("max_line must be at least 1")
        self.patterns = patterns
        self._on_match = on_match
        self._context_lines = max(0, context_lines)
        self.max_line = max_line
        self._partial = bytearray()
        self._before: deque[bytes] = deque(maxlen=self._context_lines or 1)
        self.max_buffered = 0  # high-water mark of the partial-line buffer after a feed

    @property
    def buffered(self) -> int:
        """Bytes of the unterminated line held now."""
        return len(self._partial)

    def feed(self, chunk: bytes) -> None:
        """Scan the lines completed by `chunk`; keep its unterminated end for the next one.  The
        complete lines inside `chunk` are scanned in place (no copy); only the line joining the
        previous rest with the start of `chunk` is assembled."""
        if self.patterns.engine == "none" or not chunk:
            return
        first = chunk.find(_NL)
        if first < 0:
            self._partial += chunk
        else:
            last = chunk.rfind(_NL)
            lo = 0
            if self._partial:
                self._partial += memoryview(chunk)[:first + 1]
                head = bytes(self._partial)
                self._partial.clear()
                self._scan_region(head, 0, len(head))
                lo = first + 1
            if lo <= last:
                self._scan_region(chunk, lo, last + 1)
            if last + 1 < len(chunk):
                self._partial += memoryview(chunk)[last + 1:]
        while len(self._partial) >= self.max_line:
            piece = bytes(memoryview(self._partial)[:self.max_line])
            del self._partial[:self.max_line]
            self._scan_region(piece, 0, len(piece))
        if len(self._partial) > self.max_buffered:
            self.max_buffered = len(self._partial)

    def flush(self) -> None:
        """At EOF: scan the unterminated last line, if any."""
        if self._partial:
            block = bytes(self._partial)
            self._partial.clear()
            self._scan_region(block, 0, len(block))

    def _scan_region(self, data: bytes, lo: int, hi: int) -> None:
        """Scan the lines in data[lo:hi] (lo at a line start; hi after a newline or at a line cut)."""
        for pattern_id, start, stop in self.patterns.scan(data, lo, hi):
            self._on_match(pattern_id, data[start:stop], self._context(data, lo, start))
        self._remember(data, lo, hi)

    def _context(self, data: bytes, lo: int, start: int) -> list[bytes]:
        wanted = self._context_lines
        lines: list[bytes] = []
        pos = start
        while len(lines) < wanted and pos > lo:
            end = pos - 1  # the newline ending the previous line
            begin = max(lo, data.rfind(_NL, lo, end) + 1)
            lines.append(data[begin:end])
            pos = begin
        lines.reverse()
        missing = wanted - len(lines)
        if missing > 0 and self._before:
            lines = list(self._before)[-missing:] + lines
        return lines

    def _remember(self, data: bytes, lo: int, hi: int) -> None:
        """Keep the last `context_lines` lines of data[lo:hi] for matches in later regions."""
        if not self._context_lines or hi <= lo:
            return
        end = hi - 1 if data[hi - 1] == 0x0A else hi
        tail: list[bytes] = []
        while len(tail) < self._context_lines:
            begin = max(lo, data.rfind(_NL, lo, end) + 1)
            tail.append(data[begin:end])
            if begin == lo:
                break
            end = begin - 1
        self._before.extend(reversed(tail))

"""The log pipeline: capture a service's output, write it to rotating files, scan it for patterns,
echo it on qasup's stdout, and follow files that services write themselves.

Design goals (see the Logs section of the spec and spec/peers.md):

* byte for byte: output is handled as bytes from the pipe to the file; invalid UTF-8 and lines longer
  than any buffer are kept as they are;
* fast: big reads (up to 1 MiB) from an enlarged pipe, patterns scanned over whole chunks of complete
  lines with Hyperscan (Python `re` where Hyperscan is missing or rejects a pattern), Python work only
  where a pattern matched;
* bounded memory: an unterminated line is buffered up to `max_line` bytes only;
* never blocks a service: echo drops lines (and says so) instead of waiting on a slow stdout, a full
  disk loses log bytes (and says so once) instead of stopping the reader;
* zero CPU when idle: capture sleeps in epoll on the pipe, `follow` on an inotify descriptor.

Wiring (done by the engine): `make_pipe()` gives the child its stdout+stderr; `capture(read_fd,
sinks=[rotating_file.write, scanner.feed, echo_stream.write], on_eof=[scanner.flush,
echo_stream.flush])`; for each tailed file `follow(path, other_scanner.feed)` with its own
`LineScanner` (one per byte stream: scanners keep a partial line) sharing the service's `PatternSet`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import anyio

READ_SIZE: Final = 1 << 20          # largest single read from a pipe or a followed file
PIPE_SIZE: Final = 1 << 20          # requested pipe capacity (F_SETPIPE_SZ); failure is ignored
MAX_LINE: Final = 64 * 1024         # default cap on a buffered unterminated line
F_SETPIPE_SZ: Final = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_YIELD_EVERY: Final = 4 << 20       # capture lets other tasks run at least this often during a burst
_NL: Final = b"\n"


class LogError(Exception):
    """A log file or folder cannot be created or opened; the message says which and why."""


class PatternError(ValueError):
    """A log pattern cannot be used (for instance a `\\u` escape, which byte patterns lack)."""


# --------------------------------------------------------------------------------------------
# pipes


def make_pipe(size: int = PIPE_SIZE) -> tuple[int, int]:
    """A pipe for one service's stdout and stderr: (read_fd, write_fd), both close-on-exec.

    The read end is non-blocking (for `capture`); the write end stays blocking, as a child's stdout
    should be (dup2 onto 1 and 2 clears close-on-exec for the child).  The capacity is raised to
    `size` where the kernel allows it, so a burst does not stall the writer between two reads.
    """
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_fd, F_SETPIPE_SZ, size)
    except OSError:
        pass  # EPERM above /proc/sys/fs/pipe-max-size, or not Linux: the default 64 KiB works too
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


async def capture(
    read_fd: int,
    sinks: Sequence[Callable[[bytes], None]],
    *,
    on_eof: Sequence[Callable[[], None]] = (),
    on_sink_error: Callable[[Callable[[bytes], None], Exception], None] | None = None,
) -> int:
    """Read `read_fd` until EOF, handing every chunk to each sink in order; returns the bytes read.

    EOF comes once every writer (the service and any child that inherited its stdout) has closed
    the pipe, so awaiting this before reporting an exit loses no last lines.  The fd must be
    non-blocking (see `make_pipe`); it is closed on return, on error and on cancellation.  Then
    `on_eof` callbacks run (e.g. `LineScanner.flush`, `EchoStream.flush`), also when cancelled.
    A sink that raises is dropped and reported to `on_sink_error` so the pipe keeps being drained
    (a service must never block on a full pipe); without `on_sink_error` the exception propagates.
    """
    import anyio
    import anyio.lowlevel

    live = list(sinks)
    total = 0
    unyielded = 0  # bytes handled since this task last let others run
    try:
        while True:
            try:
                chunk = os.read(read_fd, READ_SIZE)
            except BlockingIOError:
                chunk = None   # wait outside the except block: it would keep the exception alive meanwhile
            if chunk is None:
                await anyio.wait_readable(read_fd)
                unyielded = 0
                continue
            if not chunk:
                break
            total += len(chunk)
            unyielded += len(chunk)
            for sink in tuple(live):
                try:
                    sink(chunk)
                except Exception as exc:
                    if on_sink_error is None:
                        raise
                    live.remove(sink)
                    on_sink_error(sink, exc)
            if unyielded >= _YIELD_EVERY:
                unyielded = 0
                await anyio.lowlevel.checkpoint()  # a long burst must not starve other tasks
    finally:
        os.close(read_fd)
        for callback in on_eof:
            callback()
    return total


# --------------------------------------------------------------------------------------------
# patterns


def compile_line_pattern(pattern: str | bytes) -> re.Pattern[bytes]:
    """Compile one log pattern as Python matches it against one line (bytes, no newline).

    Patterns are written as text and matched against raw bytes: text is encoded as UTF-8, so a
    non-ASCII character matches its UTF-8 bytes (inside a character class: any of those bytes).
    Raises `PatternError` with a readable message; config validation can call this directly.
    """
    raw = pattern.encode("utf-8", "surrogateescape") if isinstance(pattern, str) else pattern
    try:
        return re.compile(raw)
    except re.error as exc:
        hint = ""
        if b"\\u" in raw or b"\\U" in raw or b"\\N" in raw:
            hint = " (log patterns match bytes: write the character itself, not a \\u, \\U or \\N escape)"
        raise PatternError(f"bad log pattern {_show(pattern)}: {exc}{hint}") from None


def _show(pattern: str | bytes) -> str:
    return repr(pattern.decode("utf-8", "backslashreplace") if isinstance(pattern, bytes) else pattern)


def _chunk_source(raw: bytes) -> bytes:
    """The pattern as used over a chunk of many lines: \\A and \\Z become ^ and $ so that, with
    MULTILINE, they mean the start and end of each line (as they do when matching one line)."""
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):  # backslash: copy the escape pair as a unit
            pair = raw[i:i + 2]
            out += b"^" if pair == b"\\A" else b"$" if pair == b"\\Z" else pair
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


# Syntax Python reads differently from PCRE/Hyperscan, which Hyperscan would accept silently:
# `x{,3}` (Python: 0 to 3; PCRE: literal) and POSIX classes `[[:alpha:]]` (Python: a plain set).
_PYTHON_ONLY: Final = (b"{,", b"[:", b"[=", b"[.")


_HS_PAD: Final = 16


def _dollar_positions(src: bytes) -> list[int]:
    """Offsets of the `$` anchors in a pattern: not escaped, not inside a character class."""
    found: list[int] = []
    i, in_class = 0, False
    while i < len(src):
        c = src[i]
        if c == 0x5C:  # backslash: skip the escaped byte
            i += 2
            continue
        if in_class:
            if c == 0x5D:  # ]
                in_class = False
        elif c == 0x5B:  # [ : a leading ] (after an optional ^) is a member, not the end
            in_class = True
            i += 1
            if i < len(src) and src[i] == 0x5E:
                i += 1
            if i < len(src) and src[i] == 0x5D:
                i += 1
            continue
        elif c == 0x24:
            found.append(i)
        i += 1
    return found


def _hyperscan_source(src: bytes) -> bytes | None:
    """The pattern for Hyperscan, or None when it should be left to `re`.

    Hyperscan 5.4 misses some MULTILINE `$` matches in multi-pattern databases (seen with the
    PyPI wheel: `[^a]b$` next to `b$`), so a final `$` becomes `\\n`, which is the same thing here
    because every scanned line is followed by a newline; a `$` anywhere else goes to `re`."""
    dollars = _dollar_positions(src)
    if not dollars:
        return src
    if dollars == [len(src) - 1]:
        return src[:-1] + b"\\n"
    return None


_LITERAL = re.compile(rb"\^?[^.^$*+?{}\[\]\\|()]+")


def _literal(src: bytes) -> bool:
    """A plain string, optionally anchored at the start of the line."""
    return _LITERAL.fullmatch(src) is not None


def _can_match_empty(rx: re.Pattern[bytes]) -> bool:
    """Whether a match may be empty (`^$`, `\\b`, `x*`): Hyperscan silently reports no empty match."""
    try:
        from re import _parser  # the parser `re` itself uses; its width bounds are exact enough

        return bool(_parser.parse(rx.pattern, rx.flags).getwidth()[0] == 0)
    except Exception:  # the private parser changed: the cheap check still catches `^$` and `x*`
        return rx.search(b"") is not None


class PatternSet:
    """All log patterns of one service, compiled once; the index in `patterns` is the pattern id.

    Semantics are exactly those of Python `re.search` on each line (bytes, without its newline):
    Hyperscan and chunk-wide `re` only find candidate lines fast, and every candidate is confirmed
    with the pattern's own `re` on that line alone.  A pattern therefore never matches across lines.

    `engine` is "hyperscan", "re" (Hyperscan not importable, or asked for) or "none" (no patterns);
    `fallback` lists the ids scanned with `re` and `fallback_reasons` says why (Hyperscan's own
    message: back-references, lookaround, atomic groups, possessive quantifiers, empty matches...).
    """

    def __init__(self, patterns: Sequence[str | bytes], *, engine: str = "auto") -> None:
        if engine not in ("auto", "hyperscan", "re"):
            raise ValueError(f"engine must be auto, hyperscan or re, not {engine!r}")
        self.patterns: tuple[str | bytes, ...] = tuple(patterns)
        self._line_res = [compile_line_pattern(p) for p in self.patterns]
        sources = [_chunk_source(rx.pattern) for rx in self._line_res]
        self.fallback_reasons: dict[int, str] = {}
        self._db: object | None = None
        hs_ids: list[int] = []
        if not self.patterns:
            self.engine = "none"
        elif engine == "re":
            self.engine = "re"
            self.fallback_reasons = {i: "re engine requested" for i in range(len(sources))}
        elif engine == "auto" and len(self.patterns) == 1 and _literal(self._line_res[0].pattern):
            # One literal marker (`Starting worker`, `^READY `): `re` finds it at memchr-like speed, and
            # loading Hyperscan would cost every daemon ~5 MiB of resident memory for nothing.
            self.engine = "re"
            self.fallback_reasons = {0: "a single literal pattern: re is as fast"}
            if sources[0].startswith(b"^"):   # find candidates unanchored (fast); lines are confirmed anchored
                sources[0] = sources[0][1:]
        else:
            try:
                import hyperscan
            except ImportError:
                if engine == "hyperscan":
                    raise
                self.engine = "re"
                self.fallback_reasons = {i: "hyperscan is not installed" for i in range(len(sources))}
            else:
                self.engine = "hyperscan"
                hs_ids = self._compile_hyperscan(hyperscan, sources)
        self.fallback: tuple[int, ...] = tuple(sorted(self.fallback_reasons))
        self._chunk_res = [(i, re.compile(sources[i], re.MULTILINE)) for i in self.fallback]
        if self.engine == "hyperscan" and not hs_ids:
            self.engine = "re"  # every pattern fell back: nothing is left for Hyperscan

    def _compile_hyperscan(self, hs: object, sources: list[bytes]) -> list[int]:
        """Compile the patterns Hyperscan accepts (each tried alone) into one block-mode database."""
        accepted: list[int] = []
        hs_sources: dict[int, bytes] = {}
        flags = hs.HS_FLAG_MULTILINE  # type: ignore[attr-defined]
        for i, src in enumerate(sources):
            unsafe = next((s for s in _PYTHON_ONLY if s in src), None)
            if unsafe is not None:
                self.fallback_reasons[i] = f"{unsafe.decode()!r} means something else to Hyperscan"
                continue
            hs_src = _hyperscan_source(src)
            if hs_src is None:
                self.fallback_reasons[i] = "'$' before the end of the pattern (Hyperscan misses some of those matches)"
                continue
            if _can_match_empty(self._line_res[i]):
                self.fallback_reasons[i] = "can match an empty string, which Hyperscan never reports"
                continue
            try:
                probe = hs.Database(mode=hs.HS_MODE_BLOCK)  # type: ignore[attr-defined]
                probe.compile(expressions=[hs_src], flags=flags)
            except hs.error as exc:  # type: ignore[attr-defined]
                self.fallback_reasons[i] = str(exc) or type(exc).__name__
            else:
                accepted.append(i)
                hs_sources[i] = hs_src
        if accepted:
            db = hs.Database(mode=hs.HS_MODE_BLOCK)  # type: ignore[attr-defined]
            db.compile(expressions=[hs_sources[i] for i in accepted], ids=accepted,
                       flags=[flags] * len(accepted))
            self._db = db
        return accepted

    def line_matches(self, pattern_id: int, line: bytes) -> bool:
        """Whether pattern `pattern_id` matches `line` (the reference semantics)."""
        return self._line_res[pattern_id].search(line) is not None

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
            hits.extend(self._scan_hyperscan(data, start, stop))
        for pattern_id, chunk_re in self._chunk_res:
            hits.extend(self._scan_re(pattern_id, chunk_re, data, start, stop))
        if len(hits) > 1:
            hits.sort(key=lambda hit: (hit[1], hit[0]))
        return hits

    def _scan_hyperscan(self, data: bytes, lo: int, hi: int) -> list[tuple[int, int, int]]:
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
        self._db.scan(buffer, match_event_handler=on_match)  # type: ignore[attr-defined]
        # a match ending on the newline after an unterminated last line still belongs to it
        limit = hi if terminated else hi + 1
        if not ends:
            return []
        hits: list[tuple[int, int, int]] = []
        current: dict[int, tuple[int, int]] = {}  # pattern id -> the line its last end fell in
        seen: set[tuple[int, int]] = set()
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
            if self._line_res[pattern_id].search(data[start:stop]) is not None:
                hits.append((pattern_id, start, stop))
        return hits

    def _scan_re(self, pattern_id: int, chunk_re: re.Pattern[bytes], data: bytes,
                 lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Leftmost-first search over the chunk, then jump to the next line: the first chunk-wide
        match at or after a line start starts no later than any line-level match, so no line is
        skipped; each candidate line is confirmed on its own."""
        line_re = self._line_res[pattern_id]
        # a match starting at `hi` belongs to a line only when the region ends without a newline
        limit = hi if data[hi - 1] == 0x0A else hi + 1
        hits: list[tuple[int, int, int]] = []
        pos = lo
        while pos < limit:
            m = chunk_re.search(data, pos, hi)
            if m is None:
                break
            begin = m.start()
            if begin >= limit:
                break
            start = max(lo, data.rfind(_NL, lo, begin) + 1)
            stop = data.find(_NL, begin, hi)
            if stop < 0:
                stop = hi
            if line_re.search(data[start:stop]) is not None:
                hits.append((pattern_id, start, stop))
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


# --------------------------------------------------------------------------------------------
# rotating log file


class RotatingFile:
    """Appends to a log file, rotating it like supervisord and Python's RotatingFileHandler.

    When a write would take the file past `max_bytes`, it is cut after the last complete line that
    fits (a line longer than `max_bytes` is split), then `name.N-1` -> `name.N` ... `name` ->
    `name.1` (the oldest is overwritten) and a fresh `name` is started; no byte is lost or
    duplicated.  `backups` 0 truncates the file instead; `max_bytes` 0 never rotates; a path that is
    not a regular file (`/dev/stdout`, a FIFO) is never rotated (supervisord's "Illegal seek").

    The folder is created as needed; `LogError` when it or the file cannot be.  A failing write
    (ENOSPC, EDQUOT, EIO...) never raises: the bytes are counted in `lost_bytes`, `failing` is set
    and `on_problem(message)` is called once per outage, and once more when writing works again.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int,
                 on_problem: Callable[[str], None] = lambda message: None) -> None:
        self.path = Path(path)
        self.max_bytes = max(0, int(max_bytes))
        self.backups = max(0, int(backups))
        self._on_problem = on_problem
        self.lost_bytes = 0
        self.failing = False
        self._rotation_failing = False
        self._fd = -1
        self.size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogError(f"cannot create log folder {self.path.parent}: {exc.strerror or exc}") from None
        try:
            self._open()
        except OSError as exc:
            raise LogError(f"cannot open log file {self.path}: {exc.strerror or exc}") from None
        st = os.fstat(self._fd)
        self.rotating = self.max_bytes > 0 and stat.S_ISREG(st.st_mode)
        self.size = st.st_size if stat.S_ISREG(st.st_mode) else 0

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes) -> None:
        """Append `data` (rotating as needed); never raises for I/O problems."""
        if not data:
            return
        if self._fd < 0 and not self._reopen():
            self._lose(len(data), None)
            return
        view = memoryview(data)
        if not self.rotating:
            self._write_all(view)
            return
        offset, size = 0, len(data)
        while offset < size:
            room = self.max_bytes - self.size
            if size - offset <= room:
                self._write_all(view[offset:])
                return
            cut = offset
            if room > 0:
                nl = data.rfind(_NL, offset, offset + room)
                if nl >= 0:
                    cut = nl + 1
                elif self.size == 0:
                    cut = offset + room  # one line longer than the whole file: split it
            if cut > offset:
                self._write_all(view[offset:cut])
                offset = cut
                if self.failing:  # disk full: do not rotate empty files over the good backups
                    self._lose(size - offset, None)
                    return
            if not self._rotate():
                if self._fd >= 0:
                    self._write_all(view[offset:])  # keep logging into the oversized file
                else:
                    self._lose(size - offset, None)
                return

    def _write_all(self, view: memoryview) -> None:
        try:
            while view:
                written = os.write(self._fd, view)
                self.size += written
                view = view[written:]
        except OSError as exc:
            self._lose(len(view), exc)
            return
        if self.failing:
            self.failing = False
            self._on_problem(f"log {self.path} is being written again; {self.lost_bytes} bytes were lost")

    def _lose(self, count: int, exc: OSError | None) -> None:
        self.lost_bytes += count
        if not self.failing:
            self.failing = True
            if exc is None:
                why = "the file could not be reopened"
            elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
                why = "the disk is full"
            else:
                why = exc.strerror or str(exc)
            self._on_problem(f"cannot write log {self.path}: {why}; output is dropped until it works again")

    def _reopen(self) -> bool:
        try:
            self._open()
        except OSError:
            return False
        self.size = 0 if not self.rotating else os.fstat(self._fd).st_size
        return True

    def _rotate(self) -> bool:
        """Rotate now; False (reported once) when the renames fail and the file stays as it is."""
        try:
            if self.backups == 0:
                os.ftruncate(self._fd, 0)
                self.size = 0
            else:
                base = str(self.path)
                for i in range(self.backups - 1, 0, -1):
                    older = f"{base}.{i}"
                    if os.path.lexists(older):
                        os.replace(older, f"{base}.{i + 1}")
                os.replace(base, f"{base}.1")
                os.close(self._fd)
                self._fd = -1
                self.size = 0
                self._open()
        except OSError as exc:
            if not self._rotation_failing:
                self._rotation_failing = True
                self._on_problem(f"cannot rotate log {self.path}: {exc.strerror or exc}")
            return False
        self._rotation_failing = False
        return True

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


# --------------------------------------------------------------------------------------------
# echo on qasup's stdout


class Echo:
    """Prints every service's output on qasup's stdout as `name | line`, without ever blocking.

    One writer thread (started on first use, asleep while the queue is empty) writes whole
    prefixed lines queued by `EchoStream`s, so lines of two services never interleave.  When the
    queue is full (stdout is slow or nobody reads it) new lines are dropped and counted per service;
    the writer then prints `[qasup] echo dropped N lines of NAME` once it catches up (or after a
    second of overload).  `dropped` holds the totals.  If stdout breaks (EPIPE), echo stops for good.

    The event loop's side (`offer`) takes no lock the writer could hold: the queue is a deque (append
    and popleft are atomic), each counter has one writer, and the writer sleeps on an eventfd.  A lock
    shared with the writer thread would stall the loop whenever the OS preempted the writer while it
    held that lock, which on a busy machine is milliseconds of lost readiness latency.
    """

    def __init__(self, fd: int = 1, queue_chunks: int = 1024, queue_bytes: int = 8 << 20) -> None:
        self._fd = fd
        self._max_chunks = max(1, queue_chunks)
        self._max_bytes = max(1, queue_bytes)
        self._items: deque[bytes] = deque()
        self._offered_bytes = 0                # written by offer() only
        self._written_bytes = 0                # written by the writer thread only
        self.dropped: dict[str, int] = {}      # all drops, per service (offer() only)
        self._dropped_lines = 0                # their sum (offer() only)
        self._closing = False
        self._broken = False                   # set by the writer thread only
        self._wake = -1
        self._thread: threading.Thread | None = None

    def line_writer(self, name: str, max_line: int = MAX_LINE) -> EchoStream:
        return EchoStream(self, name, max_line)

    def offer(self, name: str, data: bytes, lines: int) -> bool:
        """Queue whole prefixed lines; False (and counted) when they had to be dropped."""
        items = self._items
        if self._closing or self._broken or (
                items and (len(items) >= self._max_chunks
                           or self._offered_bytes - self._written_bytes + len(data) > self._max_bytes)):
            self.dropped[name] = self.dropped.get(name, 0) + lines
            self._dropped_lines += lines
            return False
        items.append(data)
        self._offered_bytes += len(data)
        if self._thread is None:
            self._wake = os.eventfd(0, os.EFD_CLOEXEC)
            self._thread = threading.Thread(target=self._run, name="qasup-echo", daemon=True)
            self._thread.start()
        elif len(items) == 1:   # the queue was empty: the writer may be asleep
            os.eventfd_write(self._wake, 1)
        return True

    def _run(self) -> None:
        items = self._items
        announced: dict[str, int] = {}
        announced_lines = 0
        overload_since = 0.0
        while True:
            batch = []
            size = 0
            while items and size < READ_SIZE:
                data = items.popleft()
                batch.append(data)
                size += len(data)
            if batch:
                if not self._write(b"".join(batch) if len(batch) > 1 else batch[0]):
                    return
                self._written_bytes += size
            # announce drops after the lines queued before them, or after a second of overload
            if self._dropped_lines != announced_lines:
                now = time.monotonic()
                if not overload_since:
                    overload_since = now
                if not items or now - overload_since > 1.0:
                    totals = self.dropped.copy()   # one C call: atomic under the GIL
                    notices = b"".join(
                        f"[qasup] echo dropped {count - announced.get(name, 0)} lines of {name}\n".encode()
                        for name, count in totals.items() if count > announced.get(name, 0))
                    announced, announced_lines, overload_since = totals, sum(totals.values()), 0.0
                    if notices and not self._write(notices):
                        return
            if items:
                continue
            if self._closing:
                return
            os.eventfd_read(self._wake)   # until offer() or close() wakes it

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError:
            self._broken = True
            self._items.clear()
            return False
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most `timeout` s for a stalled stdout) and stop."""
        self._closing = True
        thread = self._thread
        if thread is None:
            return
        os.eventfd_write(self._wake, 1)
        thread.join(timeout)
        if not thread.is_alive():
            os.close(self._wake)


class EchoStream:
    """One service's side of `Echo`: turns raw chunks into whole `name | ` prefixed lines."""

    def __init__(self, echo: Echo, name: str, max_line: int = MAX_LINE) -> None:
        self._echo = echo
        self.name = name
        self._prefix = name.encode("utf-8", "replace") + b" | "
        self._separator = _NL + self._prefix
        self._partial = bytearray()
        self._max_line = max_line

    def write(self, chunk: bytes) -> None:
        nl = chunk.rfind(_NL)
        if nl < 0:
            self._partial += chunk
            if len(self._partial) >= self._max_line:
                self.flush()  # shown as a line of its own; the log file keeps it whole
            return
        if self._partial:
            self._partial += memoryview(chunk)[:nl]
            body = bytes(self._partial)
            self._partial.clear()
        else:
            body = chunk[:nl]
        if nl + 1 < len(chunk):
            self._partial += memoryview(chunk)[nl + 1:]
        lines = body.count(_NL) + 1
        self._echo.offer(self.name, self._prefix + body.replace(_NL, self._separator) + _NL, lines)
        if len(self._partial) >= self._max_line:
            self.flush()

    def flush(self) -> None:
        """At EOF: show an unterminated last line."""
        if self._partial:
            body = bytes(self._partial)
            self._partial.clear()
            self._echo.offer(self.name, self._prefix + body + _NL, 1)


# --------------------------------------------------------------------------------------------
# reading the end of a log


def _tail_sources(sources: Sequence[tuple[int, int]], n: int, max_bytes: int) -> bytes:
    """The last `n` lines of the concatenation of (fd, size) sources given newest first."""
    if n <= 0:
        return b""
    blocks: list[bytes] = []
    total = 0
    newlines = 0
    trailing: bool | None = None  # whether the whole stream ends with a newline
    for fd, size in sources:
        pos = size
        while pos > 0:
            step = min(64 * 1024, pos)
            pos -= step
            block = os.pread(fd, step, pos)
            if not block:
                break
            if trailing is None:
                trailing = block.endswith(_NL)
            blocks.append(block)
            total += len(block)
            newlines += block.count(_NL)
            if newlines - (1 if trailing else 0) >= n or total >= max_bytes:
                break
        if trailing is not None and (newlines - (1 if trailing else 0) >= n or total >= max_bytes):
            break
    data = b"".join(reversed(blocks))
    end = len(data) - 1 if data.endswith(_NL) else len(data)
    index = end
    for _ in range(n):
        index = data.rfind(_NL, 0, index)
        if index < 0:
            break
    start = index + 1 if index >= 0 else 0
    if len(data) - start > max_bytes:
        cut = data.find(_NL, len(data) - max_bytes)
        start = cut + 1 if 0 <= cut < end else len(data) - max_bytes
    return data[start:]


def tail_lines(path: Path, n: int, *, max_bytes: int = 8 << 20) -> bytes:
    """The last `n` lines of a log (read backwards; continued into `path.1` when the current file
    holds fewer), at most `max_bytes` bytes; b"" when there is no log yet."""
    return _tail_with_backup(Path(path), None, n, max_bytes)


def _tail_with_backup(path: Path, current: tuple[int, int] | None, n: int, max_bytes: int) -> bytes:
    fds: list[int] = []
    try:
        sources: list[tuple[int, int]] = []
        if current is not None:
            sources.append(current)
        candidates = [path.with_name(path.name + ".1")] if current is not None else [
            path, path.with_name(path.name + ".1")]
        for candidate in candidates:
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            fds.append(fd)
            sources.append((fd, os.fstat(fd).st_size))
        return _tail_sources(sources, n, max_bytes)
    finally:
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# following a file


_SEEN_TAIL: Final = 64


class _Follower:
    """State of one followed path: the open file, its identity and the read position."""

    def __init__(self, path: Path, on_chunk: Callable[[bytes], None]) -> None:
        self.path = path
        self.on_chunk = on_chunk
        self.fd: int | None = None
        self.ident: tuple[int, int] | None = None
        self.pos = 0
        self.last = b""  # the bytes just before `pos`, to notice a truncation hidden by new writes

    def open_initial(self, from_end: bool, initial_lines: int) -> None:
        if not self._open():
            return
        size = os.fstat(self.fd).st_size  # type: ignore[arg-type]
        if from_end:
            self.pos = size
            self.last = os.pread(self.fd, _SEEN_TAIL, max(0, size - _SEEN_TAIL))  # type: ignore[arg-type]
            if initial_lines > 0:
                text = _tail_with_backup(self.path, (self.fd, size), initial_lines, 8 << 20)  # type: ignore[arg-type]
                if text:
                    self.on_chunk(text)

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return False
        st = os.fstat(fd)
        self.fd, self.ident, self.pos, self.last = fd, (st.st_dev, st.st_ino), 0, b""
        return True

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    async def drain(self) -> None:
        """Hand over everything appended since the last read (from 0 after a truncation)."""
        import anyio.lowlevel

        if self.fd is None:
            return
        if self.pos and self._truncated():
            self.pos, self.last = 0, b""  # truncated (copytruncate, `: > file`): start over
        while True:
            data = os.pread(self.fd, READ_SIZE, self.pos)
            if not data:
                return
            self.pos += len(data)
            self.last = data[-_SEEN_TAIL:] if len(data) >= _SEEN_TAIL else (self.last + data)[-_SEEN_TAIL:]
            self.on_chunk(data)
            if len(data) == READ_SIZE:
                await anyio.lowlevel.checkpoint()

    def _truncated(self) -> bool:
        """Shorter than what was read, or (truncated and written again before we looked) no
        longer holding the bytes last read just before the read position."""
        if os.fstat(self.fd).st_size < self.pos:  # type: ignore[arg-type]
            return True
        if not self.last:
            return False
        return os.pread(self.fd, len(self.last), self.pos - len(self.last)) != self.last  # type: ignore[arg-type]

    async def check(self) -> None:
        """Read what is new, and switch to a file that replaced ours (rotation) or appeared."""
        await self.drain()
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone (renamed or deleted): keep the old file until a new one appears
        if (st.st_dev, st.st_ino) != self.ident:
            self.close()
            if self._open():
                await self.drain()


def _nearest_existing(folder: Path) -> Path:
    while not folder.is_dir() and folder.parent != folder:
        folder = folder.parent
    return folder


async def follow(
    path: Path,
    on_chunk: Callable[[bytes], None],
    *,
    from_end: bool = True,
    started: anyio.Event | None = None,
    initial_lines: int = 0,
    use_inotify: bool | None = None,
) -> None:
    """Hand every byte appended to `path` to `on_chunk`, until cancelled.

    Survives rename-rotation (the rest of the old file is read, then the new one from its start),
    truncation (reads again from the start), and a file or folders that do not exist yet (read
    from the start once created).  `from_end` skips what the file holds at the start; with
    `initial_lines` those last lines (continued into `path.1` if needed) are handed over first,
    with no gap or overlap with what follows (`qasup logs -n N -f`).  `started` is set once
    watching has begun: bytes written after that are seen.

    On Linux this sleeps on an inotify descriptor (no CPU while idle, writes seen within a
    millisecond or so); elsewhere, or with `use_inotify=False`, watchfiles is used.
    """
    follower = _Follower(Path(path).absolute(), on_chunk)
    try:
        follower.open_initial(from_end, initial_lines)
        inotify = None
        if use_inotify is not False:
            try:
                from .inotify import Inotify

                inotify = Inotify()
            except OSError:
                if use_inotify:
                    raise
        if inotify is not None:
            with inotify:
                await _follow_inotify(follower, inotify, started)
        else:
            await _follow_watchfiles(follower, started)
    finally:
        follower.close()


async def _follow_inotify(follower: _Follower, inotify: object, started: anyio.Event | None) -> None:
    import anyio

    from . import inotify as ino

    target_dir = follower.path.parent
    name = os.fsencode(follower.path.name)
    ancestor_mask = (ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF
                     | ino.IN_ONLYDIR)
    dir_mask = (ancestor_mask | ino.IN_MODIFY | ino.IN_CLOSE_WRITE | ino.IN_MOVED_FROM
                | ino.IN_DELETE)
    renamed = ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM | ino.IN_DELETE
    lost = ino.IN_IGNORED | ino.IN_DELETE_SELF | ino.IN_MOVE_SELF | ino.IN_UNMOUNT
    wd: int | None = None
    watched: Path | None = None

    def sync_watch() -> None:
        """Watch the file's folder, or while it is missing its nearest existing ancestor."""
        nonlocal wd, watched
        while True:
            folder = _nearest_existing(target_dir)
            if folder == watched:
                return
            if wd is not None:
                inotify.rm_watch(wd)  # type: ignore[attr-defined]
                wd, watched = None, None
            try:
                wd = inotify.add_watch(folder, dir_mask if folder == target_dir else ancestor_mask)  # type: ignore[attr-defined]
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed meanwhile: look again
            watched = folder  # loop once more: a folder may have appeared before the watch did

    sync_watch()
    await follower.check()
    if started is not None:
        started.set()
    fd = inotify.fileno()  # type: ignore[attr-defined]
    while True:
        await anyio.wait_readable(fd)
        rewatch = restat = modified = False
        for event in inotify.read_events():  # type: ignore[attr-defined]
            if event.mask & ino.IN_Q_OVERFLOW:
                rewatch = restat = True
            elif event.wd != wd:
                continue
            elif event.mask & lost:
                if not event.mask & ino.IN_IGNORED and wd is not None:
                    inotify.rm_watch(wd)  # type: ignore[attr-defined]
                wd, watched = None, None
                rewatch = restat = True
            elif watched != target_dir:
                rewatch = restat = True  # something appeared on the way to the folder
            elif event.name == name:
                if event.mask & renamed:
                    restat = True
                else:
                    modified = True
        if rewatch:
            sync_watch()
        if restat:
            await follower.check()
        elif modified:
            await follower.drain()


async def _follow_watchfiles(follower: _Follower, started: anyio.Event | None) -> None:
    import anyio
    from watchfiles import awatch

    target_dir = follower.path.parent
    while True:
        root = _nearest_existing(target_dir)
        await follower.check()
        # rust_timeout: the first (empty) yield tells that the watcher runs; later ones re-check
        # not recursive: once the next missing folder appears, the loop moves the watch down
        async for _changes in awatch(root, watch_filter=None, debounce=50, step=5,
                                     recursive=False, yield_on_timeout=True,
                                     rust_timeout=200):
            if started is not None and not started.is_set():
                await follower.check()
                started.set()
            await follower.check()
            if _nearest_existing(target_dir) != root:
                break

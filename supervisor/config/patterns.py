"""What a log pattern (`[[on_log]] match`, `[ready] log`) means, and how it is run in linear time.

A pattern is written in Python `re` syntax and means what Python's `re.search` on one line means
(bytes, without the newline): text is encoded as UTF-8, so a non-ASCII character matches its UTF-8
bytes (inside a character class: any of those bytes).  No pattern is ever *run* by Python `re`,
whose backtracking can take exponential time (`(a+)+$` on forty `a`s and a `!`): each pattern is
translated, from the tree Python's own parser makes of it, into RE2 syntax (Latin-1, so one RE2
character is one byte; no captures) and run by RE2, or by Hyperscan where it takes the pattern.
Both are automata with a linear-time guarantee (a plain literal such as `^READY ` is found with
`bytes`/`re` literal search, linear too, without loading either).  The translation keeps Python's reading exactly:
classes become explicit byte sets (`\\s` is `[\\t\\n\\v\\f\\r ]`, `(?i)` folds ASCII letters only),
`x{,3}` is `x{0,3}`, and `^ $ \\A \\Z` are the start and end of the line.

Accepted: literals and escapes (`\\t`, `\\xHH`, `\\.`...), `.`, classes `[...]` `[^...]`, `\\d \\D \\w \\W
\\s \\S` (ASCII), `^ $ \\A \\Z \\b \\B`, groups `(...)` `(?:...)` `(?P<name>...)`, `|`, the quantifiers
`* + ? {m} {m,} {,n} {m,n}` and their lazy forms (counts up to 1000, nested counts multiplied up to
1000), the flags `(?i) (?s) (?m) (?x) (?a)` and their scoped forms `(?i:...)`, comments `(?#...)`.
Refused, naming the construct (they need backtracking): lookahead `(?=...)` `(?!...)`, lookbehind
`(?<=...)` `(?<!...)`, backreferences `\\1` `(?P=name)`, conditionals `(?(1)yes|no)`, atomic groups
`(?>...)`, possessive quantifiers `*+ ++ ?+ {m,n}+`, the locale flag `(?L)`, and a pattern too big
for RE2's default 8 MiB of program memory.

`compile_line_pattern` does all of this and is all `qasup check` needs (RE2, never Hyperscan: the
same patterns are accepted whether Hyperscan is installed or not).  The other functions prepare a
pattern's Python source for Hyperscan in `supervisor.logs.scan.PatternSet`; nothing here imports it.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Final, Protocol

_LITERAL_MAX: Final = 100_000   # a plain literal up to this long is accepted without asking RE2 (it takes 300 kB)


class PatternError(ValueError):
    """A log pattern cannot be used (for instance a `\\u` escape, which byte patterns lack)."""


class Re2Regex(Protocol):
    """The part of a compiled `re2._re2.RE2` used here (the module has no type stubs)."""

    def Match(self, anchor: Any, text: bytes | memoryview, pos: int, endpos: int  # noqa: N802
              ) -> list[tuple[int, int]]: ...


class _Re2:
    """google-re2, imported on first use (about 6 ms and 3 MiB): through its C++ binding `_re2`
    directly, which costs a third of the `re2.compile(...).search` path per call."""

    def __init__(self) -> None:
        import re2

        self.binding: Any = re2._re2
        self.options: Any = re2.Options()
        self.options.encoding = re2.Options.Encoding.LATIN1   # one character is one byte
        self.options.never_capture = True                     # groups only group: the DFA suffices
        self.options.log_errors = False
        self.unanchored: Any = re2._re2.RE2.Anchor.UNANCHORED


_engine: _Re2 | None = None


def re2_compile(source: bytes) -> tuple[Re2Regex | None, str]:
    """RE2 compiled with qasup's options (Latin-1, no captures), or None and RE2's message."""
    global _engine
    if _engine is None:
        _engine = _Re2()
    rx = _engine.binding.RE2(source, _engine.options)
    return (rx, "") if rx.ok() else (None, rx.error().decode("utf-8", "replace"))


def re2_unanchored() -> Any:
    """The `anchor` argument of `Re2Regex.Match` for a search (RE2 loaded by a compile first)."""
    assert _engine is not None
    return _engine.unanchored


class LinePattern:
    """One log pattern, checked and compiled: `pattern` (the bytes as written), `python` (Python's
    compiled reading, used only for its source and parse, never to scan) and `regex`, the RE2
    translation, whose `^ $` match at every line start and end (`(?m)`), so it scans one line or a
    whole chunk of lines alike: a match inside one line is a match of that line.  A plain literal
    (`Starting worker`, `^READY `) is matched with `bytes` operations and compiles its RE2 regex only
    if a multi-pattern scan asks for it, so a daemon whose only pattern is a marker never loads RE2."""

    __slots__ = ("pattern", "python", "re2_body", "_regex", "_anchor", "_literal")

    def __init__(self, pattern: bytes, python: re.Pattern[bytes], re2_body: bytes,
                 regex: Re2Regex | None) -> None:
        self.pattern = pattern
        self.python = python
        self.re2_body = re2_body
        self._regex = regex
        self._anchor: Any = None if regex is None else re2_unanchored()
        self._literal = pattern if regex is None else None

    @property
    def regex(self) -> Re2Regex:
        if self._regex is None:
            regex, err = re2_compile(b"(?m)" + self.re2_body)
            if regex is None:   # not for a literal that compile_line_pattern let through
                raise PatternError(f"{_show(self.pattern)} cannot be compiled by RE2: {err}")
            self._regex, self._anchor = regex, re2_unanchored()
        return self._regex

    @property
    def re2_source(self) -> str:
        return (b"(?m)" + self.re2_body).decode("latin-1")

    def search(self, line: bytes) -> bool:
        """Whether the pattern matches `line` (bytes without its newline), in linear time."""
        literal = self._literal
        if literal is not None:
            return line.startswith(literal[1:]) if literal[:1] == b"^" else literal in line
        return self.regex.Match(self._anchor, line, 0, len(line))[0][0] >= 0

    def search_text(self, data: bytes) -> bool:
        """Whether the pattern matches anywhere in `data`, several lines at once (an HTTP body: `[ready] http`
        `expect`), with `^ $` at every line start and end as in a chunk of log lines; linear time."""
        literal = self._literal
        if literal is not None:
            if literal[:1] == b"^":
                return data.startswith(literal[1:]) or b"\n" + literal[1:] in data
            return literal in data
        return self.regex.Match(self._anchor, data, 0, len(data))[0][0] >= 0

    def __repr__(self) -> str:
        return f"LinePattern({_show(self.pattern)})"


def compile_line_pattern(pattern: str | bytes) -> LinePattern:
    """Check and compile one log pattern (see the module docstring for what is accepted).

    Raises `PatternError` with a readable message naming what is wrong and what to write instead;
    config validation calls this directly (the reader puts the unit's `FILE: KEY: ` in front).
    """
    raw = pattern.encode("utf-8", "surrogateescape") if isinstance(pattern, str) else pattern
    try:
        python = re.compile(raw)
    except RecursionError:
        raise PatternError(f"{_show(pattern)} nests groups too deeply; flatten it") from None
    except (re.error, OverflowError) as exc:
        hint = ""
        if b"\\u" in raw or b"\\U" in raw or b"\\N" in raw:
            hint = " (log patterns match bytes: write the character itself, not a \\u, \\U or \\N escape)"
        raise PatternError(f"bad log pattern {_show(pattern)}: {exc}{hint}") from None
    try:
        parsed = importlib.import_module("re._parser").parse(raw)  # the tree `re` itself compiles
        body = _Translate().sub(parsed, parsed.state.flags)
    except _Refused as no:
        raise PatternError(f"{_show(pattern)} uses {no.construct}, which qasup's linear-time matchers "
                           f"cannot run; {no.advice}") from None
    except RecursionError:
        raise PatternError(f"{_show(pattern)} nests groups too deeply; flatten it") from None
    if is_literal(raw) and len(raw) <= _LITERAL_MAX:
        return LinePattern(raw, python, body, None)   # RE2 takes any literal this long: no need to load it
    regex, err = re2_compile(b"(?m)" + body)
    if regex is None:
        if "repetition" in err:
            why = ("repeats more than RE2 allows: a count may be at most 1000, and counts nested inside "
                   "each other multiplied at most 1000; use + or * or smaller counts")
        elif "too large" in err or "too deeply" in err:
            why = "is too big for RE2 (8 MiB of program memory); simplify it or split it into several rules"
        else:
            why = "cannot be translated for qasup's linear-time matchers"
        raise PatternError(f"{_show(pattern)} {why} (RE2: {err})")
    return LinePattern(raw, python, body, regex)


def _show(pattern: str | bytes) -> str:
    """The pattern as a TOML literal string shows it ('^(\\w+)$'), or repr() if it cannot be one."""
    text = pattern.decode("utf-8", "backslashreplace") if isinstance(pattern, bytes) else pattern
    return f"'{text}'" if text.isprintable() and "'" not in text else repr(text)


class _Refused(Exception):
    def __init__(self, construct: str, advice: str) -> None:
        super().__init__(construct)
        self.construct = construct
        self.advice = advice


_NO_BACKTRACK = "the linear-time matchers never backtrack, so it is not needed"
_LOOKAROUND = "rewrite it without lookaround"
_ALL: Final = frozenset(range(256))
_DIGIT: Final = frozenset(range(0x30, 0x3A))
_WORD: Final = _DIGIT | frozenset(range(0x41, 0x5B)) | frozenset(range(0x61, 0x7B)) | {0x5F}
_SPACE: Final = frozenset(b" \t\n\v\f\r")
_IGNORECASE: Final = re.IGNORECASE.value
_DOTALL: Final = re.DOTALL.value
_LOCALE: Final = re.LOCALE.value


class _Translate:
    """Python's parse tree (`re._parser`) of a bytes pattern -> RE2 source with the same meaning on
    a line.  Every single-byte item becomes an explicit set (flags applied), so no RE2 flag but the
    `(?m)` of the whole pattern is ever needed."""

    def __init__(self) -> None:
        c = importlib.import_module("re._constants")
        self.c = c
        self.categories = {
            c.CATEGORY_DIGIT: _DIGIT, c.CATEGORY_NOT_DIGIT: _ALL - _DIGIT,
            c.CATEGORY_WORD: _WORD, c.CATEGORY_NOT_WORD: _ALL - _WORD,
            c.CATEGORY_SPACE: _SPACE, c.CATEGORY_NOT_SPACE: _ALL - _SPACE,
        }
        self.at = {
            c.AT_BEGINNING: b"^", c.AT_BEGINNING_STRING: b"^", c.AT_END: b"$", c.AT_END_STRING: b"$",
            c.AT_BOUNDARY: b"\\b", c.AT_NON_BOUNDARY: b"\\B",
        }

    def sub(self, items: Any, flags: int) -> bytes:
        if flags & _LOCALE:
            raise _Refused("the locale flag ((?L))", "remove it: log lines are matched as bytes, with ASCII classes")
        out = b""
        for op, av in items:   # a loop, not a generator: one frame less per nested group
            out += self.item(op, av, flags)
        return out

    def item(self, op: Any, av: Any, flags: int) -> bytes:
        c = self.c
        if op is c.LITERAL:
            return _byte_set(_fold({av}, flags))
        if op is c.NOT_LITERAL:
            return _byte_set(_ALL - _fold({av}, flags))
        if op is c.ANY:
            return _byte_set(_ALL if flags & _DOTALL else _ALL - {0x0A})
        if op is c.IN:
            return _byte_set(self.members(av, flags))
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            lo, hi, body = av
            count = {(0, 1): b"?", (0, c.MAXREPEAT): b"*", (1, c.MAXREPEAT): b"+"}.get((lo, hi))
            if count is None:
                count = b"{%d}" % lo if lo == hi else b"{%d,}" % lo if hi == c.MAXREPEAT else b"{%d,%d}" % (lo, hi)
            return b"(?:" + self.sub(body, flags) + b")" + count + (b"?" if op is c.MIN_REPEAT else b"")
        if op is c.SUBPATTERN:
            _group, add, remove, body = av
            return b"(?:" + self.sub(body, (flags | add) & ~remove) + b")"
        if op is c.BRANCH:
            alternatives = [self.sub(alt, flags) for alt in av[1]]
            return b"(?:" + b"|".join(alternatives) + b")"
        if op is c.AT and av in self.at:
            return self.at[av]
        raise self.refusal(op, av)

    def members(self, items: Any, flags: int) -> frozenset[int]:
        c = self.c
        found: set[int] = set()
        negate = False
        for op, av in items:
            if op is c.NEGATE:
                negate = True
            elif op is c.LITERAL:
                found.add(av)
            elif op is c.RANGE:
                found.update(range(av[0], av[1] + 1))
            elif op is c.CATEGORY and av in self.categories:
                found |= self.categories[av]
            else:
                raise self.refusal(op, av)
        folded = _fold(found, flags)
        return _ALL - folded if negate else folded

    def refusal(self, op: Any, av: Any) -> _Refused:
        c = self.c
        if op in (c.ASSERT, c.ASSERT_NOT):
            behind = av[0] < 0
            kind = ("a negative " if op is c.ASSERT_NOT else "a ") + ("lookbehind" if behind else "lookahead")
            syntax = "(?<" if behind else "(?"
            return _Refused(f"{kind} ({syntax}{'!' if op is c.ASSERT_NOT else '='}...))", _LOOKAROUND)
        if op is c.GROUPREF:
            return _Refused(f"a backreference to group {av} (\\{av} or (?P=name))",
                            "match the repeated text with its own pattern instead of referring back to a group")
        if op is c.GROUPREF_EXISTS:
            return _Refused("a conditional group ((?(group)yes|no))", "write the alternatives with | instead")
        if op is getattr(c, "ATOMIC_GROUP", None):
            return _Refused("an atomic group ((?>...))", f"write a plain group (?:...): {_NO_BACKTRACK}")
        if op is getattr(c, "POSSESSIVE_REPEAT", None):
            return _Refused("a possessive quantifier (*+, ++, ?+ or {m,n}+)", f"drop the last +: {_NO_BACKTRACK}")
        return _Refused(f"a construct qasup does not translate ({op} {av})", "rewrite it more simply")


def _fold(members: set[int] | frozenset[int], flags: int) -> frozenset[int]:
    """With (?i) a bytes pattern folds ASCII letters, and only those (as Python does)."""
    if not flags & _IGNORECASE:
        return frozenset(members)
    return frozenset(members) | {b ^ 0x20 for b in members if 0x41 <= b <= 0x5A or 0x61 <= b <= 0x7A}


def _byte(b: int) -> bytes:
    return bytes([b]) if chr(b).isascii() and chr(b).isalnum() else b"\\x%02x" % b


def _byte_set(members: frozenset[int]) -> bytes:
    """An RE2 class of exactly these bytes (Latin-1: one character per byte)."""
    if len(members) == 1:
        return _byte(next(iter(members)))
    if not members:
        return b"[^\\x00-\\xff]"   # matches nothing: Latin-1 text has no character above \xff
    out = bytearray(b"[")
    ordered = sorted(members)
    start = prev = ordered[0]
    for b in [*ordered[1:], -1]:
        if b == prev + 1:
            prev = b
            continue
        out += _byte(start) if start == prev else _byte(start) + b"-" + _byte(prev)
        start = prev = b
    return bytes(out + b"]")


def chunk_source(raw: bytes) -> bytes:
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
PYTHON_ONLY: Final = (b"{,", b"[:", b"[=", b"[.")


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


def hyperscan_source(src: bytes) -> bytes | None:
    """The pattern for Hyperscan, or None when it should be left to RE2.

    Hyperscan 5.4 misses some MULTILINE `$` matches in multi-pattern databases (seen with the
    PyPI wheel: `[^a]b$` next to `b$`), so a final `$` becomes `\\n`, which is the same thing here
    because every scanned line is followed by a newline; a `$` anywhere else goes to RE2."""
    dollars = _dollar_positions(src)
    if not dollars:
        return src
    if dollars == [len(src) - 1]:
        return src[:-1] + b"\\n"
    return None


_LITERAL = re.compile(rb"\^?[^.^$*+?{}\[\]\\|()]+")


def is_literal(src: bytes) -> bool:
    """A plain string, optionally anchored at the start of the line."""
    return _LITERAL.fullmatch(src) is not None


def can_match_empty(rx: re.Pattern[bytes]) -> bool:
    """Whether a match may be empty (`^$`, `\\b`, `x*`): Hyperscan silently reports no empty match."""
    try:
        # the parser `re` itself uses (already loaded by `re`); its width bounds are exact enough.
        # Imported by name because typeshed has no stub for the private `re._parser`.
        parser = importlib.import_module("re._parser")
        return bool(parser.parse(rx.pattern, rx.flags).getwidth()[0] == 0)
    except Exception:  # the private parser changed: the cheap check still catches `^$` and `x*`
        return rx.search(b"") is not None

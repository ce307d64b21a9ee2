"""No log pattern a unit can hold may stall qasup (issue 11): every pattern runs on a linear-time engine
(Hyperscan or RE2), a pattern neither can run is refused at check time naming the construct, and the
RE2 translation means exactly what Python's `re.search` on one line means."""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.config.patterns import PatternError, compile_line_pattern
from supervisor.logs.scan import LineScanner, PatternSet

from conftest import make_stack, qasup
from enginehelp import poll, stack, up  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:Possible nested set")  # `[[:a]]`: Python warns, reads a set

ATTACK = "(?=a)(a+)+$"
EVIL_LINE = b"a" * 40 + b"!"
NL = b"\n"

REFUSED = [
    (ATTACK, r"a lookahead \(\(\?=\.\.\.\)\).*rewrite it without lookaround"),
    (r"(?!x)y", r"a negative lookahead \(\(\?!\.\.\.\)\)"),
    (r"(?<=x)y", r"a lookbehind \(\(\?<=\.\.\.\)\)"),
    (r"(?<!x)y", r"a negative lookbehind \(\(\?<!\.\.\.\)\)"),
    (r"(\w+) \1", r"a backreference to group 1 \(\\1 or \(\?P=name\)\)"),
    (r"(?P<w>\w+) (?P=w)", r"a backreference to group 1"),
    (r"(a)?(?(1)b|c)", r"a conditional group"),
    (r"(?>ab)c", r"an atomic group \(\(\?>\.\.\.\)\).*\(\?:\.\.\.\)"),
    (r"a++b", r"a possessive quantifier"),
    (r"x{2,5}+", r"a possessive quantifier"),
    (r"(?L)\w", r"the locale flag"),
    (r"a{1001}", r"repeats more than RE2 allows.*at most 1000.*RE2: invalid repetition size"),
    (r"(a{100}){100}", r"counts nested inside each other multiplied"),
]


@pytest.mark.parametrize(("pattern", "message"), REFUSED)
def test_a_pattern_only_backtracking_can_run_is_refused_naming_the_construct(pattern: str, message: str) -> None:
    with pytest.raises(PatternError, match=message) as caught:
        compile_line_pattern(pattern)
    assert str(caught.value).startswith(f"'{pattern}' "), caught.value   # shown as written in TOML
    with pytest.raises(PatternError):
        PatternSet(["fine", pattern])   # nothing that holds a unit's patterns can be built with it


def test_the_attack_message_is_the_documented_one() -> None:
    with pytest.raises(PatternError) as caught:
        compile_line_pattern(ATTACK)
    assert str(caught.value) == ("'(?=a)(a+)+$' uses a lookahead ((?=...)), which qasup's linear-time matchers "
                                 "cannot run; rewrite it without lookaround")


def test_check_time_validation_is_the_same_without_hyperscan() -> None:
    """On a machine without Hyperscan the same patterns are refused and accepted, and scanning uses RE2."""
    code = (
        "import sys\n"
        "sys.modules['hyperscan'] = None  # import hyperscan now raises ImportError\n"
        "from supervisor.config.patterns import PatternError, compile_line_pattern\n"
        "from supervisor.logs.scan import PatternSet\n"
        f"for p in {[p for p, _ in REFUSED]!r}:\n"
        "    try:\n"
        "        compile_line_pattern(p)\n"
        "    except PatternError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('accepted ' + p)\n"
        "ps = PatternSet(['(a+)+$', 'ERROR', '^$'])\n"
        "assert ps.engine == 're2' and ps.fallback == (0, 1, 2), ps.engine\n"
        "assert [i for i, a, b in ps.scan(b'x\\n" + "a" * 40 + "!\\naaa\\n\\nERROR\\n')] == [0, 2, 1]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=30)


@contextlib.contextmanager
def interrupted_after(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the body runs longer: a backtracking regression would
    run for hours; Python's `re` checks for signals as it goes, so SIGALRM interrupts it."""
    def expire(_sig: int, _frame: object) -> None:
        raise TimeoutError(f"still scanning after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("engine", ["re2", "auto"])
def test_catastrophic_pattern_scans_in_linear_time(engine: str) -> None:
    """`(a+)+$` (no lookaround: accepted) takes Python `re` ~2^40 steps on 40 `a`s and a `!`; RE2 and
    Hyperscan take microseconds, and a MiB of `a`s (cut into max_line pieces) is no worse."""
    patterns = PatternSet([r"(a+)+$", r"(x+x+)+y"], engine=engine)
    if engine == "re2":
        assert patterns.engine == "re2" and patterns.fallback == (0, 1)
    found: list[tuple[int, int]] = []
    scanner = LineScanner(patterns, lambda i, line, ctx: found.append((i, len(line))), context_lines=2)
    start = time.monotonic()
    with interrupted_after(5):
        scanner.feed(EVIL_LINE + b"\n" + b"x" * 5000 + b"\n")
        scanner.feed(b"a" * (1 << 20))
        scanner.feed(b"\n" + EVIL_LINE)
        scanner.flush()
        assert not patterns.line_matches(0, EVIL_LINE) and patterns.line_matches(0, b"a" * 100)
    elapsed = time.monotonic() - start
    assert elapsed < 1.0, elapsed
    assert found == [(0, scanner.max_line)] * 16   # the MiB of `a`s: 16 pieces of 64 KiB, each matching


# Python's reading of the syntax where RE2's differs, or where flags change byte sets.
DIFFERENTIAL_PATTERNS = [
    r"\s", r"a\sb", r"\S+$", r"(?i)[a-c]x", r"(?i)[^b]", r"(?i)E", r"[^\n]", r"(?s)a.b", r"a.b", r"\w\W",
    r"\bA", r"a\B", r"a{,2}b", r"^x{,}$", r"x{2}", r"\Aa|b\Z", r"(?x) a  b # comment", r"(?#c)E", r"[\d.]+x",
    r"(?i:a)B", r"\xe9", r"é", r"[é]", r"(?i)É", r"\x0b", r"^$", r"a*?b", r"(a|)+x", r"[]a]", r"[^]a]", r"\Z",
    r"[[:a]]", r"\$", r"[$^]",
]
BYTES = st.sampled_from([b"a", b"A", b"b", b"B", b"x", b"E", b"e", b" ", b"\t", b"\x0b", b"\x0c", b"\r",
                         b"\xc3", b"\xa9", b"\x89", b"\xe9", b"1", b".", b"]", b":", b"$", b"^", b"\x00", b"\xff"])


@functools.cache
def differential_set() -> PatternSet:
    return PatternSet(DIFFERENTIAL_PATTERNS, engine="re2")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.lists(BYTES, max_size=10).map(b"".join), min_size=1, max_size=12))
def test_the_re2_translation_means_what_python_re_means_on_a_line(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"
    patterns = differential_set()
    expected = [(i, line) for line in lines for i, p in enumerate(DIFFERENTIAL_PATTERNS)
                if re.search(p.encode(), line)]
    assert [(i, data[a:b]) for i, a, b in patterns.scan(data)] == expected
    for line in lines:
        for i, p in enumerate(DIFFERENTIAL_PATTERNS):
            assert patterns.line_matches(i, line) == bool(re.search(p.encode(), line)), (p, line)


def test_single_byte_items_match_the_same_bytes_as_python() -> None:
    for p in [r"\s", r"\S", r"\d", r"\D", r"\w", r"\W", r".", r"(?s).", r"(?i)[a-z]", r"(?i)[^A-Z_]", r"(?i)\W",
              r"[\s\d]", r"[^\s\d]", r"(?i)[Z-a]", r"(?i)k", r"[\x00-\x08é]", r"\x80"]:
        lp = compile_line_pattern(p)
        rx = re.compile(p.encode())
        for b in range(256):
            assert lp.search(bytes([b])) == bool(rx.search(bytes([b]))), (p, b)


def test_qasup_check_refuses_the_attack_with_exit_2(tmp_path: Path) -> None:
    root = make_stack(tmp_path, {"web": f"""
        command = ["sleep", "1"]
        [[on_log]]
        match = '{ATTACK}'
        action = "warn"
        """})
    result = qasup("check", cwd=root)
    assert result.returncode == 2, result
    assert ("services.d/web.toml: on_log[1].match: '(?=a)(a+)+$' uses a lookahead ((?=...)), which qasup's "
            "linear-time matchers cannot run; rewrite it without lookaround") in result.stderr


def test_a_service_printing_catastrophic_lines_leaves_the_daemon_responsive(stack, up) -> None:  # noqa: F811
    """End to end: a rule `(?:(a+)+$)` (the `$` before the end keeps it off Hyperscan, so RE2 scans it)
    and a service printing lines of 40 `a`s and a `!`, and a MiB of `a`s: status answers quickly,
    the rule still fires on a line of `a`s, and SIGTERM stops the stack."""
    printer = (
        "import sys, time\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'up\\n'); out.flush()\n"
        "out.write(b'a' * (1 << 20) + b'\\n'); out.flush()\n"
        f"burst = {EVIL_LINE + NL!r} * 200 + b'aaaa\\n'\n"
        "while True:\n"
        "    out.write(burst); out.flush()\n"
        "    time.sleep(0.05)\n"
    )
    stack.unit("spam", command=[sys.executable, "-c", printer], ready={"log": "^up$"},
               on_log=[{"match": "(?:(a+)+$)", "action": "warn", "message": "all a"}])
    u = up().start()
    u.wait_state("spam", "ready")
    u.wait_out("all a")
    for _ in range(3):
        start = time.monotonic()
        code, doc = u.status()
        took = time.monotonic() - start
        assert code == 0 and doc is not None, code
        assert took < 1.0, f"status took {took:.2f} s"
    u.signal(signal.SIGTERM)
    assert u.wait(10) == 0
    poll(lambda: not u.leftovers(), 5, "the printer to be gone")


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.lists(st.sampled_from([b"a", b"b", b"R", b" "]), max_size=8).map(b"".join), max_size=10),
       literal=st.sampled_from(["ab", "^ab", "a b", "^R", "b\nR", "aa"]), final_newline=st.booleans())
def test_the_single_literal_fast_path_finds_what_re_finds(lines: list[bytes], literal: str, final_newline: bool) -> None:
    patterns = PatternSet([literal])
    assert patterns.engine == "re"
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    pieces = data.split(b"\n")
    if data.endswith(b"\n"):
        pieces.pop()
    expected = [line for line in pieces if data and re.search(literal.encode(), line)]
    assert [data[a:b] for _, a, b in patterns.scan(data)] == expected


def test_a_daemon_whose_only_pattern_is_a_marker_never_loads_re2_or_hyperscan() -> None:
    """RE2 costs about 3 MiB resident: a lone literal marker (the usual `[ready] log`) needs neither engine,
    while checking any other pattern asks RE2 (whether Hyperscan is installed or not)."""
    code = (
        "import sys\n"
        "from supervisor.config.patterns import compile_line_pattern\n"
        "from supervisor.logs.scan import PatternSet\n"
        "ps = PatternSet(['^READY '])\n"
        "assert [ps.scan(b'x READY\\nREADY 1\\n')] == [[(0, 8, 15)]], ps.scan(b'x READY\\nREADY 1\\n')\n"
        "assert 're2' not in sys.modules and 'hyperscan' not in sys.modules\n"
        "compile_line_pattern('^READY [0-9]+$')\n"
        "assert 're2' in sys.modules and 'hyperscan' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent, timeout=30)

"""Dotenv files (supervisor.config.dotenv): parsing, update-or-append, quoting, crash safety."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from supervisor.config import dotenv
from supervisor.config.dotenv import DotenvError, format_value, load, parse, update

SAMPLE = """\
# QAnything settings
OPENAI_API_KEY=''
OPENAI_API_BASE='https://example.invalid/v1'   # trailing comment
export OPENAI_API_MODEL_NAME="gpt-3.5-turbo"

OPENAI_API_CONTEXT_LENGTH=4096
UNKNOWN_KEY = keep me # not part of the value
OFFCUT_TOKEN=0
"""


def test_parse() -> None:
    assert parse(SAMPLE) == {
        "OPENAI_API_KEY": "",
        "OPENAI_API_BASE": "https://example.invalid/v1",
        "OPENAI_API_MODEL_NAME": "gpt-3.5-turbo",
        "OPENAI_API_CONTEXT_LENGTH": "4096",
        "UNKNOWN_KEY": "keep me",
        "OFFCUT_TOKEN": "0",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=a#b", "a#b"),  # '#' not after whitespace is part of the value
        ("A=#x", "#x"),
        ("A= # only a comment", ""),
        ("A=", ""),
        ("A='it''s'", None),  # text after the closing quote: error
        ("A='a \\n $b'", "a \\n $b"),  # single quotes are literal
        ('A="a\\nb\\t\\"c\\" \\\\ \\$d \\q"', 'a\nb\t"c" \\ $d \\q'),
        ('A="two\nlines"', "two\nlines"),
        ("export A=1", "1"),
        ("  export   A  =  spaced value  ", "spaced value"),
        ("A=x\r", "x"),
    ],
)
def test_parse_values(text: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(DotenvError):
            parse(text)
    else:
        assert parse(text) == {"A": expected}


def test_export_as_a_key_name() -> None:
    assert parse("export=1\nexportX=2") == {"export": "1", "exportX": "2"}


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("A=1\nnot an assignment\n", 2, "expected '=' after 'not'"),
        ("A=1\n=2\n", 2, "expected KEY=VALUE, got '=2'"),
        ("A=1\n\nB\n", 3, "expected '=' after 'B'"),
        ('A=1\nB="open\n\n', 2, 'opening " is never closed'),
        ('A="x\ny" z\n', 2, "unexpected text after the quoted value"),
    ],
)
def test_parse_errors(text: str, line: int, message: str) -> None:
    with pytest.raises(DotenvError) as caught:
        parse(text)
    assert caught.value.line == line and message in str(caught.value)


def test_load_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\nB\n")
    with pytest.raises(DotenvError, match=rf"^{path}:2: "):
        load(path)


def test_update_keeps_everything_else(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text(SAMPLE)
    path.chmod(0o640)
    update(path, {"OFFCUT_TOKEN": "1400", "OPENAI_API_MODEL_NAME": "gpt 4", "GPUID1": "0", "MODEL_NAME": ""})
    text = path.read_text()
    assert text == SAMPLE.replace("OFFCUT_TOKEN=0", "OFFCUT_TOKEN=1400").replace(
        'export OPENAI_API_MODEL_NAME="gpt-3.5-turbo"', "export OPENAI_API_MODEL_NAME='gpt 4'"
    ) + "GPUID1=0\nMODEL_NAME=''\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert load(path)["UNKNOWN_KEY"] == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == [".env"]  # no temp file left behind


def test_update_rewrites_every_occurrence_and_multiline_values(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text('A=1\nB="x\ny"\n# note\nA=2\nC=3')  # no final newline
    update(path, {"A": "9", "B": "z", "D": "4"})
    assert path.read_text() == "A=9\nB=z\n# note\nA=9\nC=3\nD=4\n"


def test_update_creates_a_missing_file_with_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new.env"
    old = os.umask(0o027)
    os.umask(old)  # read the test process's umask; update() itself never changes it
    update(path, {"A": "b c"})
    assert path.read_text() == "A='b c'\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old


def test_update_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.env"
    real.write_text("A=1\n")
    link = tmp_path / ".env"
    link.symlink_to(real)
    update(link, {"A": "2"})
    assert link.is_symlink() and real.read_text() == "A=2\n"


def test_update_leaves_a_malformed_file_alone(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\ngarbage\n")
    with pytest.raises(DotenvError, match=":2: "):
        update(path, {"A": "2"})
    assert path.read_text() == "A=1\ngarbage\n"


@pytest.mark.parametrize("key", ["1A", "A-B", "A B", ""])
def test_update_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        update(tmp_path / ".env", {key: "x"})


@pytest.mark.parametrize(
    ("value", "written"),
    [("7B", "7B"), ("0,1", "0,1"), ("", "''"), ("a b", "'a b'"), ("a#b", "'a#b'"), ("$HOME", "'$HOME'"),
     ("it's", '"it\'s"'), ('say "hi"', "'say \"hi\"'"), ("a\nb", '"a\\nb"'),
     ("0\n", '"0\\n"')],   # a final newline is not bare ("$" matches before it): it would be lost
)
def test_format_value(value: str, written: str) -> None:
    assert format_value(value) == written
    assert parse(f"K={written}") == {"K": value}


VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
KEYS = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z")


@settings(max_examples=300, deadline=None)
@given(value=VALUES)
@example(value="0\n")
def test_quoting_round_trips(value: str) -> None:
    assert parse(f"K={format_value(value)}\n") == {"K": value}
    assert parse(f"export K = {format_value(value)} # comment\nNEXT=1") == {"K": value, "NEXT": "1"}


@settings(max_examples=60, deadline=None)
@given(before=st.dictionaries(KEYS, VALUES, max_size=5), changes=st.dictionaries(KEYS, VALUES, max_size=5))
def test_update_round_trips_through_files(tmp_path_factory: pytest.TempPathFactory, before: dict, changes: dict) -> None:
    path = tmp_path_factory.mktemp("env") / ".env"
    path.write_text("# header\n" + "".join(f"{k}={format_value(v)}\n# after {k}\n" for k, v in before.items()))
    update(path, changes)
    assert load(path) == {**before, **changes}
    assert path.read_text().count("# after") == len(before)


# ------------------------------------------------------------------------------------------------
# Crash safety: SIGKILL during update() never leaves a half-written file.

WRITER = """
import sys
from supervisor.config import dotenv
path, tag, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
big = tag * (size // len(tag))
print("start", flush=True)
dotenv.update(path, {"HEAD": big, "TAIL": tag})
print("done", flush=True)
"""
BIG = 8 * 1024 * 1024  # the new value is this big, so the write itself takes a while (~30 ms of a ~100 ms update)


def test_sigkill_during_update_never_leaves_a_partial_file(tmp_path: Path) -> None:
    original = "HEAD=old\n" + "".join(f"KEY_{i}='value {i}'  # comment {i}\n" for i in range(2000)) + "TAIL=old\n"
    path = tmp_path / ".env"
    path.write_text(original)
    started = time.monotonic()
    update(path, {"HEAD": "z" * BIG, "TAIL": "z"})
    full = time.monotonic() - started  # how long one whole update takes here
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    outcomes = []
    for attempt in range(12):
        path.write_text(original)
        tag = f"new{attempt}"
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), tag, str(BIG)], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "start\n"
            time.sleep(full * attempt / 10)  # spread the kill over the whole update, and past it
            child.send_signal(signal.SIGKILL)
        finally:
            child.wait(timeout=30)
            child.stdout.close()  # type: ignore[union-attr]
        text = path.read_text()
        if text == original:
            outcome = "old"
        else:
            big = tag * (BIG // len(tag))
            assert text == original.replace("HEAD=old", f"HEAD={big}").replace("TAIL=old", f"TAIL={tag}")
            outcome = "new"
        leftovers = list(tmp_path.glob(".env.*.tmp"))
        outcomes.append(outcome + "+tmp" * bool(leftovers))  # a temp file left = killed mid-write
        for leftover in leftovers:
            leftover.unlink()
    assert outcomes[0].startswith("old"), outcomes  # killed right after start: the old file stands
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_module_has_no_import_time_side_effects() -> None:
    assert dotenv.__all__ == ["DotenvError", "format_value", "load", "parse", "update"]

"""TOML syntax errors are reported as FILE:LINE:COLUMN, also where tomllib only says "at end of document"."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.config.files import read_toml
from supervisor.config.tomlerror import locate
from supervisor.errors import Problems


def where(text: str) -> tuple[int, int, str]:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return locate(text, str(e))
    raise AssertionError("valid TOML")


@pytest.mark.parametrize(("text", "line", "column", "says"), [
    ('a = [1, 2', 1, 5, "Unclosed array: the array that begins here is never closed"),
    ('a = [[1,2],[3', 1, 12, "the array that begins here"),              # the innermost open one
    ('x = 1\na = [1,\n 2,\n', 2, 5, "Invalid value: the array that begins here is never closed"),
    ('[tab', 1, 1, "the table header that begins here is never closed"),
    ('x = 1\n[[on_log', 2, 1, "the table header that begins here"),
    ('a = """abc\n\n', 1, 5, "the string that begins here is never closed"),
    ("k = '''\nfoo", 1, 5, "the string that begins here"),
    ('a = {x = 1', 1, 5, "the inline table that begins here"),
    ('a = ["]", "[" # x\n', 1, 5, "the array that begins here"),         # brackets in strings do not count
    ('a = [ # [ {\n', 1, 5, "the array that begins here"),               # nor in comments
    ('a = "x\\"]"\nb = [', 2, 5, "the array that begins here"),         # an escaped quote stays in the string
    ('x = 1\ny = \n', 2, 5, "Invalid value"),                            # tomllib's own place, kept
    ('a = 1\na = 2\n', 2, 6, "Cannot overwrite a value"),
])
def test_place_of_a_syntax_error(text: str, line: int, column: int, says: str) -> None:
    got = where(text)
    assert got[:2] == (line, column), got
    assert says in got[2] and "(at " not in got[2]


def test_nothing_open_at_the_end_names_the_end_of_the_file() -> None:
    assert where("a = 1\nb =") == (2, 4, "Invalid value at the end of the file")


def test_read_toml_reports_file_line_column(tmp_path) -> None:
    f = tmp_path / "web.toml"
    f.write_text('description = "web"\ncommand = ["python3",\n  "-m", "http.server"\n')
    probs = Problems()
    assert read_toml(f, probs) is None
    assert [str(p) for p in probs.items] == [
        f"{f}:2:11: TOML syntax error: Unclosed array: the array that begins here is never closed"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab =[]{}"\'#\n\\,1.', max_size=60))
def test_any_text_gets_a_place_inside_the_file(text: str) -> None:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, column, message = locate(text, str(e))
        lines = text.split("\n")
        assert 1 <= line <= len(lines)
        assert 1 <= column <= len(lines[line - 1]) + 1
        assert message

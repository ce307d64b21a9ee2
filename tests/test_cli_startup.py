"""The command line's start-up cost: ``qasup up`` builds only its own verb's parser, a plain ``qasup status`` is
read without argparse at all (``cli.main.plain_status``, checked against argparse here), and argparse's
formatters learn the terminal width without importing ``shutil`` (bz2, lzma, zlib)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> str:
    import os

    full = dict(os.environ, PYTHONPATH=str(ROOT), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=full).stdout.strip()


@pytest.mark.parametrize("argv", [["up"], ["--config", "x.toml", "up", "-b", "vllm"], ["status"],
                                  ["status", "--json"], ["check"], ["plan", "--json"]])
def test_a_plain_verb_parses_without_shutil(argv):
    code = (f"import sys; from supervisor.cli import main as m; p = m.build_parser(m._fast_verb({argv!r})); "
            f"a = p.parse_args({argv!r}); print(a.verb, sorted(p._subparsers._group_actions[0].choices), "
            f"'shutil' in sys.modules, 'bz2' in sys.modules)")
    verb, *rest = _run(code).split(" ", 1)
    assert verb == next(a for a in argv if not a.startswith("-") and not a.endswith(".toml"))
    choices, flags = rest[0].rsplit("]", 1)
    assert choices == f"['{verb}'"   # only its own parser was built
    assert flags.split() == ["False", "False"]


def test_the_up_parser_alone_parses_what_the_full_one_does():
    argv = ["--config", "s.toml", "up", "-b", "vllm", "-m", "Qwen-7B", "--gpus", "none", "--listen",
            "127.0.0.1:1", "--http", "0.0.0.0:0", "--no-echo"]
    alone = vars(cli.build_parser(only=cli._fast_verb(argv)).parse_args(argv))
    full = vars(cli.build_parser().parse_args(argv))
    assert cli._fast_verb(argv) == "up"
    assert alone == full and alone["verb"] == "up" and alone["no_echo"] is True


def test_help_and_unknown_verbs_still_get_the_full_parser(capsys):
    assert cli._fast_verb(["up", "--help"]) is None and cli._fast_verb(["-h"]) is None
    with pytest.raises(SystemExit) as info:
        cli.build_parser(only=cli._fast_verb(["bogus"])).parse_args(["bogus"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'up'" in err and "'status'" in err   # every verb offered
    with pytest.raises(SystemExit):
        cli.build_parser(only="up").parse_args(["up", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_help_is_wrapped_to_columns_like_shutil_would():
    code = ("import sys; from supervisor.cli import main as m; sys.stdout.write(m.build_parser().format_help()); "
            "print('shutil' in sys.modules)")
    narrow = _run(code, COLUMNS="60").splitlines()
    wide = _run(code, COLUMNS="200").splitlines()
    assert narrow[-1] == wide[-1] == "False"
    usage = [line for line in narrow if line.startswith(("usage:", "             "))]
    assert len(usage) > 1 and max(map(len, usage)) <= 60   # the usage wraps at $COLUMNS - 2, as shutil's width
    assert wide[0].startswith("usage: qasup") and wide[0].endswith("VERB ...")   # one line when it fits
    from supervisor.cli import parser

    assert parser._terminal_width() > 0


def test_clean_text_takes_the_fast_path_only_for_printable_text():
    from supervisor.cli.render import clean_text

    def slow(text: object) -> str:   # what it did before the fast path
        value = str(text).strip().replace("\r\n", "\n").replace("\n", " | ")
        return "".join(ch if ch.isprintable() else "?" for ch in value)

    for text in ("plain", "  padded  ", "a\nb", "a\r\nb", "\x1b[31mred\x1b[0m", "tab\there", "é ü 漢字", 42, None,
                 "", "\u200b zero width", "trailing\n"):
        assert clean_text(text) == slow(text), repr(text)
    assert clean_text("a\x07b\nc") == "a?b | c"


def test_a_verb_not_asked_for_costs_no_parser():
    p = cli.build_parser(only="status")
    assert list(p._subparsers._group_actions[0].choices) == ["status"]   # type: ignore[union-attr]
    assert vars(p.parse_args(["status", "a", "--json"])) == vars(cli.build_parser().parse_args(["status", "a", "--json"]))


def test_mask_secrets_masks_the_same_with_its_key_cache():
    from supervisor.protocol import MASK, mask_secrets

    value = {"API_KEY": "x", "name": "a", "list": [{"TOKEN": None, "sub": {"db_password": 3}},
                                                   (1, {"OFFCUT_TOKEN": 5, "Secret": [1]})], "n": 1}
    want = {"API_KEY": MASK, "name": "a", "list": [{"TOKEN": None, "sub": {"db_password": MASK}},
                                                   [1, {"OFFCUT_TOKEN": 5, "Secret": MASK}]], "n": 1}
    for _ in range(2):   # the second time from the cache
        assert mask_secrets(value) == want
    assert value["API_KEY"] == "x"   # a copy: the input is untouched
    assert mask_secrets((1, "a")) == [1, "a"] and mask_secrets("TOKEN") == "TOKEN" and mask_secrets(None) is None
    rows = {"services": [{"name": f"s{i}", "pid": i, "counters": {"rule_matches": {}}} for i in range(1000)]}
    assert mask_secrets(rows) == rows


# --------------------------------------------------------------------------- plain_status against argparse

_TOKENS = ["status", "--json", "--all", "--watch", "-w", "--socket", "--config", "--socket=/s", "--config=c.toml",
           "/tmp/q.sock", "sanic", "llm", "", "-", "--", "--js", "-h", "--help", "-wa", "--all=1", "logs", "up",
           "--socket=", "x y", "--version", "-x", "ocr"]


def _argparse(argv: list[str]) -> dict | None:
    """What the full argparse parser makes of ``argv`` (the keys the verbs read), or None when it refuses."""
    import contextlib
    import io

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            ns = cli.build_parser().parse_args(argv)
    except SystemExit:
        return None
    return vars(ns)


def _check_plain(argv: list[str]) -> None:
    plain = cli.plain_status(argv)
    if plain is None:
        return   # argparse decides (and says what is wrong)
    full = _argparse(argv)
    assert full is not None, f"plain_status took {argv!r}, which argparse refuses"
    assert vars(plain) == full, argv


def test_plain_status_reads_the_plain_forms_as_argparse_does():
    taken = [["status"], ["status", "--json"], ["status", "sanic", "llm"], ["status", "--all", "sanic"],
             ["--socket", "/tmp/q.sock", "status", "-w"], ["status", "--socket=/s", "--json", "ocr"],
             ["--config", "c.toml", "status", "--config=d.toml"], ["status", "sanic", "--json"],
             ["status", ""], ["status", "--watch", "--json"]]
    for argv in taken:
        assert cli.plain_status(argv) is not None, argv
        _check_plain(argv)
    # left to argparse: help, abbreviations, `--`, names after an option, values that look like options
    for argv in (["status", "-h"], ["status", "--js"], ["status", "--", "x"], ["status", "a", "--json", "b"],
                 ["--socket", "--json", "status"], ["status", "--socket"], ["logs", "x"], ["up"], [],
                 ["status", "-wa"], ["status", "--all=1"], ["status", "-"]):
        assert cli.plain_status(argv) is None, argv


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_TOKENS), max_size=6))
def test_plain_status_never_disagrees_with_argparse(argv):
    _check_plain(argv)

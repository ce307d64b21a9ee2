"""supervisor.cli.render: the status table's cells, state colours and terminal-safe text (pure functions)."""

from __future__ import annotations

import pytest

from supervisor.cli.render import clean_text, last_error, paint, render_status
from supervisor.protocol import ServiceState, StackState, service_status, stack_status


@pytest.mark.parametrize("text, line", [
    ("plain", "plain"),
    ("  padded\n", "padded"),
    ("two\nlines", "two | lines"),
    ("crlf\r\nline", "crlf | line"),
    ("\x1b[31mred\x1b[0m", "?[31mred?[0m"),
    ("tab\there", "tab?here"),
    (42, "42"),
])
def test_clean_text_is_one_printable_line(text, line):
    assert clean_text(text) == line


def test_last_error_column():
    assert last_error(service_status(name="a", state="ready")) == "-"
    assert last_error(service_status(name="a", state="failed", exit_code=3)) == "exited with code 3"
    assert last_error(service_status(name="a", state="backoff", exit_code=3)) == "-"  # only a failed one
    assert last_error(service_status(name="a", state="failed", exit_code=3, last_error="boom\nx")) == "boom | x"


def test_every_state_has_a_colour_and_unknown_text_is_left_alone():
    for state in [*ServiceState, *StackState]:
        assert paint("x", state, True).startswith("\x1b["), state
        assert paint("x", state, False) == "x"
    assert paint("x", "nonsense", True) == "x"


def test_table_from_the_protocol_shape():
    payload = {"stack": stack_status(state="ready", pid=7, uptime_s=5.0, name="qa"),
               "services": [service_status(name="web", state="ready", pid=10, restarts=2, uptime_s=4.0,
                                           ready_after_s=0.5),
                            service_status(name="ocr", state="disabled")]}
    lines = render_status(payload).splitlines()
    assert lines[0] == "stack ready  pid 7  up 5.0s  1/1 services ready"
    assert lines[1].split() == ["NAME", "STATE", "PID", "UPTIME", "RESTARTS", "READY", "LAST", "ERROR"]
    assert lines[2].split() == ["web", "ready", "10", "4.0s", "2", "500ms", "-"]
    assert lines[3].split() == ["ocr", "disabled", "-", "-", "0", "-", "-"]


def test_table_tolerates_missing_keys_and_junk_rows():
    assert render_status({}).splitlines() == ["stack ?  0/0 services ready",
                                              "NAME  STATE  PID  UPTIME  RESTARTS  READY  LAST ERROR"]
    lines = render_status({"stack": {}, "services": ["junk", {"name": "a"}]}).splitlines()
    assert lines[0] == "stack ?  0/1 services ready"
    assert lines[2].split() == ["a", "?", "-", "-", "0", "-", "-"]


def test_disabled_services_hidden_unless_asked_with_a_line_that_says_how_many():
    payload = {"stack": stack_status(state="ready", pid=7, uptime_s=5.0, name="qa"),
               "services": [service_status(name="web", state="ready", pid=10),
                            service_status(name="ocr", state="disabled", last_error="disabled by the plan: x"),
                            service_status(name="sanic-cloud", state="disabled")]}
    short = render_status(payload, show_disabled=False).splitlines()
    assert [ln.split()[0] for ln in short[2:-1]] == ["web"]
    assert short[-1] == "(2 services disabled by the plan not shown: qasup status --all)"
    full = render_status(payload, show_disabled=True).splitlines()
    assert [ln.split()[0] for ln in full[2:]] == ["web", "ocr", "sanic-cloud"]
    assert full[3].endswith("disabled by the plan: x")
    one = {"stack": payload["stack"], "services": payload["services"][:2]}
    assert render_status(one, show_disabled=False).splitlines()[-1] == \
        "(1 service disabled by the plan not shown: qasup status --all)"
    nothing_hidden = {"stack": payload["stack"], "services": payload["services"][:1]}
    assert "not shown" not in render_status(nothing_hidden, show_disabled=False)


def test_units_run_on_other_machines_are_counted_apart_from_disabled_ones():
    """Under `up --only`, the units another machine runs are disabled here ("not run here: ..."): the line under
    the table says so instead of calling them disabled by the plan."""
    away = "disabled by the plan: not run here: outside --only (another machine runs it)"
    payload = {"stack": stack_status(state="ready", pid=7, uptime_s=5.0, name="qa"),
               "services": [service_status(name="web", state="ready", pid=10),
                            service_status(name="ctl", state="disabled", last_error=away),
                            service_status(name="w2", state="disabled", last_error=away),
                            service_status(name="ocr", state="disabled", last_error="disabled by the plan: x")]}
    assert render_status(payload, show_disabled=False).splitlines()[-1] == \
        "(1 service disabled by the plan and 2 run on other machines not shown: qasup status --all)"
    only_away = {"stack": payload["stack"], "services": payload["services"][:2]}
    assert render_status(only_away, show_disabled=False).splitlines()[-1] == \
        "(1 runs on other machines not shown: qasup status --all)"

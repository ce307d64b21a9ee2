"""The integration suite: qasup against real programs (Sanic, nginx, redis, memcached, postgres, FastChat).

Run it with ``tests/integration/run.sh`` (installs what it needs, then runs pytest here with
``QASUP_INTEGRATION=1``). The default ``pytest -q`` skips every test under this folder, with that reason: these
tests install and start third-party servers and take minutes.

Every test here gets the ``integration`` marker. A program a test needs that is missing skips the test with the
install command, except under ``QASUP_INTEGRATION_REQUIRE=1`` (set by run.sh, which installed them): then it is a
failure, so that a broken install never passes as a row of skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from .kit import Work

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("QASUP_INTEGRATION") == "1"
SKIP_REASON = ("integration suite (real nginx, redis, memcached, postgres, Sanic, FastChat; minutes): run "
               "tests/integration/run.sh, or set QASUP_INTEGRATION=1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs real third-party programs (tests/integration/run.sh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)
            if not ENABLED:
                item.add_marker(skip)


def need(*programs: str, apt: str = "") -> dict[str, str]:
    """The paths of ``programs`` (names on PATH or absolute paths); skip (or fail, under
    QASUP_INTEGRATION_REQUIRE=1) when one is missing, naming the Debian package that has it."""
    found = {}
    for prog in programs:
        path = prog if os.path.isabs(prog) and os.access(prog, os.X_OK) else shutil.which(prog)
        if not path:
            why = f"{prog} is not installed" + (f" (apt-get install {apt})" if apt else "")
            if os.environ.get("QASUP_INTEGRATION_REQUIRE") == "1":
                pytest.fail(why + "; run.sh should have installed it")
            pytest.skip(why)
        found[prog] = path
    return found


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


@pytest.fixture
def work() -> Iterator[Work]:
    """A private work folder and stack; at teardown nothing the test started may be left running."""
    w = Work()
    yield w
    left = w.cleanup()
    assert not left, "left behind by the test (killed now):\n" + "\n".join(left)

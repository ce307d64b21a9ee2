"""``user``, ``group`` and ``groups``: check-time errors, and the child really running as that user (its uid,
gid and supplementary groups read from /proc/PID/status), with its HOME/USER/LOGNAME; ``[prepare]`` and exec
probes run as the same user."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from supervisor.config import accounts
from supervisor.config.spec import UnitSpec
from supervisor.errors import Problems
from supervisor.proc.kernel import SpawnError
from supervisor.proc.spawn import unit_credentials

from conftest import make_stack, qasup
from enginehelp import Stack, poll, stack, together, together_alone, together_results, up  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs qasup to run as root")

ENV_AND_SLEEP = ["/bin/sh", "-c", 'echo "home=$$HOME user=$$USER logname=$$LOGNAME"; echo up; exec sleep 100']


def _nobody() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")


def _ids(pid: int) -> dict[str, list[int]]:
    """Uid/Gid/Groups of a live process, from /proc/PID/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in value.split()]
    return out


def _group(*names: str) -> grp.struct_group:
    for name in names:
        try:
            return grp.getgrnam(name)
        except KeyError:
            continue
    pytest.skip(f"none of the groups {names} exists here")


@together
def test_nobody_runs_as_its_uid_with_its_home_user_and_logname(stack: Stack, up) -> None:
    nobody = _nobody()
    stack.unit("low", command=ENV_AND_SLEEP, user="nobody", ready={"log": "up"})
    stack.unit("own", command=ENV_AND_SLEEP, user="nobody", env={"HOME": "/tmp"}, ready={"log": "up"})
    u = up().start("--no-echo")
    u.wait_state("low", "ready", 20)
    u.wait_state("own", "ready", 20)
    ids = _ids(u.service_status("low")["pid"])
    assert ids["Uid"] == [nobody.pw_uid] * 4
    assert ids["Gid"] == [nobody.pw_gid] * 4
    assert sorted(ids["Groups"]) == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))   # not root's groups
    assert f"home={nobody.pw_dir} user=nobody logname=nobody".encode() in u.log("low")
    assert b"home=/tmp user=nobody logname=nobody" in u.log("own")   # the unit's own HOME is kept
    assert os.stat(stack.root / "logs" / "low.log").st_uid == 0   # qasup writes the log file, as root
    assert u.stop() == 0


@together
def test_group_and_supplementary_groups_are_applied(stack: Stack, up) -> None:
    _nobody()
    primary = _group("daemon", "bin")
    extra = _group("audio", "video", "users")
    stack.unit("g", command=ENV_AND_SLEEP, user="nobody", group=primary.gr_name,
               groups=[extra.gr_name, "54321"], ready={"log": "up"})
    stack.unit("n", command=ENV_AND_SLEEP, user="54320", ready={"log": "up"})   # a number without an entry
    u = up().start("--no-echo")
    u.wait_state("g", "ready", 20)
    u.wait_state("n", "ready", 20)
    ids = _ids(u.service_status("g")["pid"])
    assert ids["Gid"] == [primary.gr_gid] * 4
    assert sorted(ids["Groups"]) == sorted([extra.gr_gid, 54321])
    ids = _ids(u.service_status("n")["pid"])
    assert ids["Uid"] == [54320] * 4 and ids["Gid"] == [54320] * 4 and ids["Groups"] == []
    assert b"home=/ user=54320 logname=54320" in u.log("n")
    assert u.stop() == 0


@together
def test_prepare_and_exec_probes_run_as_the_user(stack: Stack, up) -> None:
    nobody = _nobody()
    uid = nobody.pw_uid
    stack.unit("p", command=["/bin/sh", "-c", "exec sleep 100"], user="nobody",
               prepare={"command": ["/bin/sh", "-c", "echo prepare-uid=$$(id -u)"]},
               ready={"exec": ["/bin/sh", "-c", f"test $$(id -u) = {uid}"], "timeout": "20s"})
    u = up().start("--no-echo")
    u.wait_state("p", "ready", 30)   # the probe passes only as that user
    assert f"prepare-uid={uid}".encode() in u.log("p")
    assert u.stop() == 0


def test_unknown_user_and_groups_are_check_errors_with_the_key(tmp_path: Path) -> None:
    root = make_stack(tmp_path, {
        "a": 'command = ["true"]\nuser = "no-such-user-x"\n',
        "b": 'command = ["true"]\nuser = "nobody"\ngroup = "no-such-group-x"\ngroups = ["no-such-group-y", "7"]\n',
        "c": 'command = ["true"]\nuser = "4242"\ngroup = "4243"\n',   # numbers are taken as they are
    })
    r = qasup("check", cwd=root)
    assert r.returncode == 2, r.stdout + r.stderr
    text = r.stdout + r.stderr
    assert "a.toml: user: unknown user 'no-such-user-x' (not in /etc/passwd" in text
    assert "b.toml: group: unknown group 'no-such-group-x' (not in /etc/group" in text
    assert "b.toml: groups: unknown group 'no-such-group-y' (not in /etc/group" in text
    assert "c.toml" not in text


def test_a_user_that_vanished_fails_the_start_and_qasup_not_root_is_a_start_error(monkeypatch) -> None:
    class Unit:   # the two fields unit_credentials reads of a ResolvedUnit
        spec = UnitSpec(name="db", file=Path("/s/db.toml"), command=("true",), user="nobody")
        env = {"HOME": "/root", "PATH": "/bin"}

    creds = unit_credentials(Unit())  # type: ignore[arg-type]
    assert creds is not None and creds.switch and dict(creds.env)["USER"] == "nobody"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SpawnError, match=r"^/s/db.toml: user: qasup runs as uid 1000: only root can start "
                                         r"services as another user"):
        unit_credentials(Unit())  # type: ignore[arg-type]
    monkeypatch.setattr(accounts.pwd, "getpwnam", lambda name: (_ for _ in ()).throw(KeyError(name)))
    with pytest.raises(SpawnError, match=r"^/s/db.toml: user: unknown user 'nobody'"):
        unit_credentials(Unit())  # type: ignore[arg-type]


def test_check_accepts_known_accounts_without_problems() -> None:
    probs = Problems()
    accounts.check_accounts(UnitSpec(name="x", file=Path("x.toml"), command=("true",), user="root",
                                     group="root", groups=("0",)), probs)
    assert not probs
    creds = accounts.lookup("root")
    assert (creds.uid, creds.gid, creds.home, creds.name) == (0, 0, pwd.getpwnam("root").pw_dir, "root")

"""A unit's ``user``, ``group`` and ``groups``: looked up in the system's user database, checked, and turned into
the :class:`Credentials` a child switches to before exec.

- ``user``: a name (looked up with ``getpwnam``) or a number (taken as it is; one without an entry runs with
  ``group`` = the same number unless ``group`` says otherwise, no supplementary groups, ``HOME=/``).
- ``group``: a name or a number; default: the user's primary group.
- ``groups``: supplementary groups (names or numbers), replacing the default: every group the user is a member
  of (``os.getgrouplist``).
- The child gets ``HOME``, ``USER`` and ``LOGNAME`` of the user unless the unit sets them itself.

Unknown names are check-time problems (``FILE: user: unknown user 'x' ...``); starting services as another user
when qasup is not root is a start-time error (``qasup check`` can run anywhere).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping

from supervisor.config.spec import UnitSpec
from supervisor.errors import Problems
from supervisor.records import dataclass

__all__ = ["AccountError", "Credentials", "check_accounts", "credentials_for", "lookup"]

IDENTITY_VARIABLES = ("HOME", "USER", "LOGNAME")


class AccountError(ValueError):
    """A user or group that cannot be used; ``key`` is the unit key at fault (``user``, ``group``, ``groups``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Credentials:
    """Who a child runs as. ``switch`` is False when that is who qasup already is (nothing to change)."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str
    home: str
    switch: bool = True
    env: tuple[tuple[str, str], ...] = ()   # HOME/USER/LOGNAME to set in the child's environment


def _user(value: str) -> tuple[int, pwd.struct_passwd | None]:
    if value.isdigit():
        uid = int(value)
        try:
            return uid, pwd.getpwuid(uid)
        except (KeyError, OverflowError):
            return uid, None
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise AccountError("user", f"unknown user {value!r} (not in /etc/passwd nor the system's user database; "
                                   "give a number to use a uid without an entry)") from None
    return entry.pw_uid, entry


def _group(key: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise AccountError(key, f"unknown group {value!r} (not in /etc/group nor the system's group database; "
                                "give a number to use a gid without an entry)") from None


def lookup(user: str, group: str | None = None, groups: tuple[str, ...] = ()) -> Credentials:
    """Credentials for ``user`` (with ``group`` and ``groups`` as the unit keys say); raises :class:`AccountError`."""
    uid, entry = _user(user)
    gid = _group("group", group) if group is not None else (entry.pw_gid if entry is not None else uid)
    if groups:
        extra = tuple(dict.fromkeys(_group("groups", g) for g in groups))
    elif entry is not None:
        try:
            extra = tuple(dict.fromkeys(os.getgrouplist(entry.pw_name, gid)))
        except OSError:
            extra = (gid,)
    else:
        extra = ()
    name = entry.pw_name if entry is not None else str(uid)
    home = entry.pw_dir if entry is not None and entry.pw_dir else "/"
    return Credentials(uid=uid, gid=gid, groups=extra, name=name, home=home)


def check_accounts(unit: UnitSpec, probs: Problems) -> None:
    """Check-time: every name the unit gives exists (numbers are accepted as they are)."""
    if unit.user is None:
        return
    for key, values in (("user", (unit.user,)), ("group", (unit.group,) if unit.group else ()),
                        ("groups", unit.groups)):
        for value in values:
            try:
                if key == "user":
                    _user(value)
                else:
                    _group(key, value)
            except AccountError as e:
                probs.add(unit.file_of(key), e.key, str(e))


def credentials_for(unit: UnitSpec, env: Mapping[str, str], inherited: Mapping[str, str]) -> Credentials | None:
    """Start-time: the unit's credentials (None without a ``user``), for a child whose environment is ``env``.

    ``HOME``/``USER``/``LOGNAME`` are the user's unless the unit set them: in its ``env`` table, or to a value
    other than qasup's own (``inherited``; an env file). Raises :class:`AccountError`, also when qasup is not
    root and would have to become someone else."""
    if unit.user is None:
        return None
    creds = lookup(unit.user, unit.group, unit.groups)
    mine = {"HOME": creds.home, "USER": creds.name, "LOGNAME": creds.name}
    sets = tuple((k, v) for k, v in mine.items()
                 if k not in unit.env and (k not in env or env.get(k) == inherited.get(k)))
    euid = os.geteuid()
    switch = True
    if euid != 0:
        same = creds.uid == euid and creds.gid == os.getegid() and (
            not unit.groups or set(creds.groups) == set(os.getgroups()))
        if not same:
            raise AccountError("user", f"qasup runs as uid {euid}: only root can start services as another user "
                                       f"({unit.user!r} is uid {creds.uid})")
        switch = False
    return Credentials(creds.uid, creds.gid, creds.groups, creds.name, creds.home, switch, sets)

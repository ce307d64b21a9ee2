"""Finding where qasup can make cgroups (the cgroup2 mount, else a v1 ``freezer`` or ``pids`` hierarchy, at
qasup's own cgroup there), the file operations cgroups are made of, and :class:`Cgroup`, one service instance's
cgroup. See ``cgroup.py``.
"""

from __future__ import annotations

import os
import signal

__all__ = ["CGROUPS_ENV", "Cgroup", "find_hierarchy", "put_pid", "read_text", "write_text"]

CGROUPS_ENV = "QASUP_CGROUPS"
"""``none`` turns cgroups off; ``v1`` or ``v2`` insists on that version (else none, with the reason)."""

_V1_CONTROLLERS = ("freezer", "pids")


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def write_text(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _unescape(field: str) -> str:
    """A mountinfo path field (spaces and such are octal escapes: ``\\040``)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount root, mount point, fstype, super options) of every cgroup mount."""
    text = read_text("/proc/self/mountinfo") or ""
    found = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields, rest = head.split(), tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((_unescape(fields[3]), _unescape(fields[4]), rest[0], set(rest[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """qasup's cgroup per hierarchy: ``""`` for cgroup2, else each controller name (from /proc/self/cgroup)."""
    paths: dict[str, str] = {}
    for line in (read_text("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[""] = parts[2]
        for name in parts[1].split(","):
            if name:
                paths[name] = parts[2]
    return paths


def _place(mount_root: str, mount_point: str, own: str) -> str | None:
    """Where qasup's own cgroup lies under the mount (None: it is not visible through this mount)."""
    root = mount_root.rstrip("/")
    if root and not (own == root or own.startswith(root + "/")):
        return None
    rel = own[len(root):].lstrip("/")
    return os.path.join(mount_point, rel) if rel else mount_point


def find_hierarchy(prefer: str | None = None) -> tuple[int, str, str | None] | str:
    """``(version, our cgroup's folder, v1 controller or None)``, or why there is none (a sentence).

    ``prefer``: ``"v2"``, ``"v1"`` or ``"none"`` (default: :data:`CGROUPS_ENV`, else v2 then v1)."""
    choice = (prefer or os.environ.get(CGROUPS_ENV, "") or "auto").strip().lower()
    if choice in ("none", "off", "0", "no"):
        return f"{CGROUPS_ENV}={choice}"
    mounts, own = _mounts(), _own_paths()
    if not mounts:
        return "no cgroup file system is mounted"
    reasons = []
    if choice in ("auto", "v2"):
        for root, point, kind, _ in mounts:
            if kind == "cgroup2" and "" in own:
                at = _place(root, point, own[""])
                if at is not None and os.access(at, os.W_OK):
                    return 2, at, None
                reasons.append(f"cgroup2 at {point} is not writable" if at else
                               f"qasup's cgroup {own['']} is not under the cgroup2 mount {point}")
        if not reasons:
            reasons.append("no cgroup2 mount")
    if choice in ("auto", "v1"):
        for controller in _V1_CONTROLLERS:
            for root, point, kind, options in mounts:
                if kind == "cgroup" and controller in options and controller in own:
                    at = _place(root, point, own[controller])
                    if at is not None and os.access(at, os.W_OK):
                        return 1, at, controller
                    reasons.append(f"the v1 {controller} hierarchy at {point} is not writable")
        if choice == "v1" and not reasons:
            reasons.append("no cgroup v1 freezer or pids hierarchy")
    return "; ".join(reasons) or f"{CGROUPS_ENV}={choice} is not none, v1 or v2"


class Cgroup:
    """One service instance's cgroup (a folder). Every method is cheap and never raises."""

    __slots__ = ("path", "version", "freezer", "gone")

    def __init__(self, path: str, version: int, freezer: bool) -> None:
        self.path = path
        self.version = version
        self.freezer = freezer
        self.gone = False   # removed by :meth:`remove`: every later call answers without a system call

    def __repr__(self) -> str:
        return f"<Cgroup {self.path}>"

    def _folders(self) -> list[str]:
        """This cgroup and any cgroups a service made inside it (rare: a container engine, systemd)."""
        out, todo = [], [self.path]
        while todo:
            at = todo.pop()
            out.append(at)
            try:
                with os.scandir(at) as it:
                    todo.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
        return out

    def pids(self) -> set[int]:
        """Every process in this cgroup (and cgroups below it); empty when it is gone."""
        found: set[int] = set()
        if self.gone:
            return found
        for at in self._folders():
            text = read_text(os.path.join(at, "cgroup.procs"))
            if text:
                found.update(int(x) for x in text.split())
        return found

    def populated(self) -> bool:
        """Whether any live process is in it (v2: ``cgroup.events``, no listing; zombies do not count)."""
        if self.gone:
            return False
        if self.version == 2:
            text = read_text(os.path.join(self.path, "cgroup.events"))
            return text is not None and "populated 1" in text
        return bool(self.pids())

    def adopt(self, pid: int) -> bool:
        """Move ``pid``, then the children it already forked (recursively), in; False if ``pid`` could not be."""
        procs = os.path.join(self.path, "cgroup.procs")
        if not write_text(procs, str(pid)):
            return False
        todo, seen = _children_of(pid), {pid}
        while todo:
            kid = todo.pop()
            if kid not in seen:
                seen.add(kid)
                write_text(procs, str(kid))
                todo.extend(_children_of(kid))
        return True

    def kill(self) -> None:
        """SIGKILL everything in it: v2 ``cgroup.kill``; else freeze (v1 freezer or v2 ``cgroup.freeze``), SIGKILL
        every pid until no new one shows, thaw. Returns at once: wait with :meth:`populated` for them to go."""
        if self.version == 2 and write_text(os.path.join(self.path, "cgroup.kill"), "1"):
            return
        folders = self._folders()
        frozen = [at for at in folders if self._freeze(at, True)]
        try:
            signalled: set[int] = set()
            for _ in range(100):   # unfrozen (pids hierarchy), new ones may keep coming: a bounded chase
                now = self.pids() - signalled
                if not now:
                    break
                for pid in now:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                signalled |= now
        finally:
            for at in frozen:
                self._freeze(at, False)

    def _freeze(self, at: str, on: bool) -> bool:
        if self.version == 2:
            return write_text(os.path.join(at, "cgroup.freeze"), "1" if on else "0")
        if self.freezer:
            return write_text(os.path.join(at, "freezer.state"), "FROZEN" if on else "THAWED")
        return False

    def remove(self) -> bool:
        """Remove the folder (and empty ones below it); False while processes are in it. Gone is success."""
        if self.gone:
            return True
        ok = True
        for at in reversed(self._folders()):
            try:
                os.rmdir(at)
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        self.gone = ok
        return ok


def put_pid(fd: int, pid: int) -> bool:
    """Write ``pid`` to an open ``cgroup.procs`` (``tasks``, ``cgroup.threads``): False if refused."""
    try:
        os.write(fd, str(pid).encode())
        return True
    except OSError:
        return False


def _children_of(pid: int) -> list[int]:
    """``pid``'s children now (every thread's list)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        text = read_text(f"/proc/{pid}/task/{tid}/children")
        if text:
            kids.extend(int(x) for x in text.split())
    return kids


"""What the guardian runs once qasup is gone: kill every process of the stack, until none is left.

This file is run as a program (``python -I -S -c SOURCE``, its text read when the guardian starts), never
imported by qasup at run time: it must work with the package gone, so it uses only ``os``, ``sys`` and ``time``.

Arguments: ``FD DAEMON_ID CGROUP LEDGER_FDS EXCLUDE``. It reads FD until EOF (the pipe only qasup holds the
write end of), then, round after round until a round finds nothing (at most :data:`ROUNDS`):

1. the daemon's cgroup (``CGROUP``, ``-`` for none): v2 ``cgroup.kill`` of it (everything below it dies); v1:
   freeze each folder, SIGKILL every pid in it, thaw;
2. the ledger (``LEDGER_FDS``, comma-separated, ``-`` for none; see ``ledger.py``): each recorded process that
   still runs with the recorded start time (never a recycled pid), and every process in a process group or
   session whose leader was recorded, unless that pid now belongs to another process;
3. every process whose environment carries ``QASUP_DAEMON=DAEMON_ID``;
4. the /proc descendants of all of those (found in the same scan, before any of them dies).

Never itself, PID 1, nor the pids, groups and sessions in ``EXCLUDE`` (qasup's own: ``pid,sid,pgid``). Then the
cgroup folders are removed. Exit code 0.
"""

from __future__ import annotations

import os
import sys
import time

ROUNDS = 100
PAUSE = 0.05


def wait_eof(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    offset = 0
    while True:
        try:
            chunk = os.pread(fd, 65536, offset)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def parse_ledger(contents: list[bytes]) -> list[tuple[int, int, int, int]]:
    """The same as ``supervisor.proc.ledger.parse_ledger`` (a test checks that they agree)."""
    best: tuple[int, list[tuple[int, int, int, int]]] | None = None
    for data in contents:
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        else:
            lines = lines[:-1]
        if not lines or not lines[0].startswith(b"G "):
            continue
        try:
            generation = int(lines[0][2:])
            end = lines.index(b"S")
        except ValueError:
            continue
        records: list[tuple[int, int, int, int]] = []
        for line in lines[1:end] + lines[end + 1:]:
            fields = line.split()
            if len(fields) == 4 and all(f.isdigit() for f in fields):
                records.append((int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])))
        if best is None or generation > best[0]:
            best = (generation, records)
    return best[1] if best else []


def stat_of(pid: int) -> tuple[bytes, int, int, int, int] | None:
    """(state, ppid, pgid, sid, start) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2:].split()
    try:
        return fields[0], int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19])
    except (IndexError, ValueError):
        return None


def folders(root: str) -> list[str]:
    out: list[str] = []
    todo = [root]
    while todo:
        at = todo.pop()
        out.append(at)
        try:
            todo.extend(os.path.join(at, n) for n in os.listdir(at) if os.path.isdir(os.path.join(at, n)))
        except OSError:
            pass
    return out


def write(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def cgroup_pids(root: str) -> set[int]:
    found: set[int] = set()
    for at in folders(root):
        try:
            with open(os.path.join(at, "cgroup.procs")) as f:
                found.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return found


def kill_cgroup(root: str, me: int) -> int:
    """SIGKILL everything in the cgroup tree; how many processes were in it."""
    pids = cgroup_pids(root) - {me}
    if not pids:
        return 0
    if write(os.path.join(root, "cgroup.kill"), "1"):
        return len(pids)
    frozen = [at for at in folders(root) if write(os.path.join(at, "freezer.state"), "FROZEN")
              or write(os.path.join(at, "cgroup.freeze"), "1")]
    for pid in cgroup_pids(root) - {me}:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
    for at in frozen:
        write(os.path.join(at, "freezer.state"), "THAWED") or write(os.path.join(at, "cgroup.freeze"), "0")
    return len(pids)


def remove_cgroup(root: str) -> None:
    for _ in range(100):
        left = False
        for at in reversed(folders(root)):
            try:
                os.rmdir(at)
            except FileNotFoundError:
                pass
            except OSError:
                left = True
        if not left:
            return
        time.sleep(PAUSE)


def tagged(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def sweep(records: list[tuple[int, int, int, int]], needle: bytes, excluded: set[int], cgroup: str | None,
          me: int) -> int:
    """One round: kill what is found (with its /proc descendants); how many were."""
    hit = kill_cgroup(cgroup, me) if cgroup else 0
    stats: dict[int, tuple[bytes, int, int, int, int]] = {}
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = stat_of(int(name))
            if st is not None:
                stats[int(name)] = st
                kids.setdefault(st[1], []).append(int(name))
    wanted = {(pid, start) for pid, start, _, _ in records}
    leaders = set()
    for pid, start, pgid, sid in records:
        if pid in excluded or pid not in (pgid, sid):
            continue
        now = stats.get(pid)
        if now is None or now[4] == start:   # gone (its number cannot be reused while members hold it), or it runs
            leaders.add(pid)
    targets = [pid for pid, (_, _, pgid, sid, start) in stats.items()
               if (pid, start) in wanted or pgid in leaders or sid in leaders or tagged(pid, needle)]
    seen: set[int] = set()
    while targets:   # every target with its descendants, all from this one scan
        pid = targets.pop()
        if pid in seen or pid in excluded:
            continue
        seen.add(pid)
        targets.extend(kids.get(pid, ()))
        if stats[pid][0] not in (b"Z", b"X", b"x"):
            try:
                os.kill(pid, 9)
                hit += 1
            except OSError:
                pass
    return hit


def main(argv: list[str]) -> int:
    fd, daemon_id = int(argv[0]), argv[1]
    cgroup = argv[2] if len(argv) > 2 and argv[2] != "-" else None
    fds = [int(x) for x in argv[3].split(",")] if len(argv) > 3 and argv[3] != "-" else []
    excluded = {int(x) for x in argv[4].split(",") if x} if len(argv) > 4 and argv[4] != "-" else set()
    wait_eof(fd)
    me = os.getpid()
    excluded |= {0, 1, me, os.getsid(0), os.getpgid(0)}
    records = parse_ledger([read_fd(f) for f in fds])
    needle = ("QASUP_DAEMON=" + daemon_id).encode()
    for _ in range(ROUNDS):
        if not sweep(records, needle, excluded, cgroup, me):
            break
        time.sleep(PAUSE)
    if cgroup:
        remove_cgroup(cgroup)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

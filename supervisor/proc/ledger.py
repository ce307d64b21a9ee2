"""The guardian's ledger: which processes, process groups and sessions are the stack's, kept where the guardian
can read them after qasup died, even by SIGKILL.

qasup notes every process it spawns and every member its tree scans find (``pid start pgid sid``, start in
clock ticks since boot, so a recycled pid is never mistaken for the process noted). The records live in two
anonymous memory files (``memfd``) that the guardian inherited: qasup appends to the active one; when what was
appended passes the size of the last snapshot (at least :data:`COMPACT_AT` bytes), it writes a fresh snapshot
of what is still relevant into the other file and switches. A snapshot is ``G <generation>`` first and ``S``
last; the guardian reads both files and takes the newest complete one with the records appended after it, so a
qasup killed in the middle of a write loses nothing that was complete before it (a torn last line is ignored).

Bounded: a record is dropped at a snapshot when its process is gone and its pid no longer names a live process
group or session; so the files hold about one record per live process, however often services restart.
"""

from __future__ import annotations

import os
import threading

from supervisor.proc.proctable import ProcStat, all_stats

__all__ = ["COMPACT_AT", "Ledger", "parse_ledger"]

COMPACT_AT = 64 * 1024
"""Bytes appended after a snapshot before the next one is written (or the snapshot's size, when larger)."""

Record = tuple[int, int, int, int]   # pid, start, pgid, sid


def _memfile(name: str) -> int:
    try:
        return os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        fd, path = tempfile.mkstemp(prefix=f"{name}-")
        os.unlink(path)
        os.set_inheritable(fd, False)
        return fd


class Ledger:
    """The records and their two files (``fds``: pass both to the guardian). Thread-safe."""

    def __init__(self) -> None:
        self.fds = (_memfile("qasup-ledger-a"), _memfile("qasup-ledger-b"))
        self._lock = threading.Lock()
        self._records: dict[tuple[int, int], tuple[int, int]] = {}   # (pid, start) -> (pgid, sid)
        self._active = 0
        self._generation = 0
        self._offset = 0
        self._snapshot_size = 0
        self.snapshots = 0   # how many were written (tests, benchmarks)
        with self._lock:
            self._snapshot()

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def note(self, pid: int, start: int, pgid: int, sid: int) -> None:
        """Record a process of the stack (a no-op if it is recorded already)."""
        key = (pid, start)
        with self._lock:
            if key in self._records:
                return
            self._records[key] = (pgid, sid)
            line = f"{pid} {start} {pgid} {sid}\n".encode()
            try:
                os.pwrite(self.fds[self._active], line, self._offset)
            except OSError:
                return
            self._offset += len(line)
            if self._offset - self._snapshot_size > max(COMPACT_AT, self._snapshot_size):
                self._snapshot()

    def note_stat(self, st: ProcStat) -> None:
        self.note(st.pid, st.start, st.pgid, st.sid)

    def size(self) -> int:
        """Bytes in the active file (what the guardian would read)."""
        return self._offset

    def __len__(self) -> int:
        return len(self._records)

    def _snapshot(self) -> None:
        """Drop what cannot matter any more and write the rest as a new snapshot into the other file."""
        if self._records:
            stats = {st.pid: st for st in all_stats()}
            if stats:   # without /proc, keep everything
                held = {st.pgid for st in stats.values() if st.alive} | {st.sid for st in stats.values() if st.alive}
                keep = {}
                for (pid, start), ids in self._records.items():
                    st = stats.get(pid)
                    if st is not None and st.start == start and st.alive:
                        keep[(pid, start)] = ids        # it runs
                    elif st is None and pid in held:
                        keep[(pid, start)] = ids        # gone, but its group or session lives on
                self._records = keep
        self._generation += 1
        body = "".join(f"{pid} {start} {g} {s}\n" for (pid, start), (g, s) in self._records.items())
        data = f"G {self._generation}\n{body}S\n".encode()
        target = self.fds[1 - self._active] if self.snapshots else self.fds[0]
        try:
            os.ftruncate(target, 0)
            os.pwrite(target, data, 0)
        except OSError:
            return
        self._active = self.fds.index(target)
        self._offset = self._snapshot_size = len(data)
        self.snapshots += 1


def parse_ledger(contents: list[bytes]) -> list[Record]:
    """The records of the newest complete snapshot among ``contents`` (each file's bytes) and what follows it.

    The guardian has its own copy of this (it runs without the package); tests check they agree."""
    best: tuple[int, list[Record]] | None = None
    for data in contents:
        lines = data.split(b"\n")
        if data.endswith(b"\n"):
            lines.pop()
        else:
            lines = lines[:-1]   # torn last line
        if not lines or not lines[0].startswith(b"G "):
            continue
        try:
            generation = int(lines[0][2:])
            end = lines.index(b"S")
        except ValueError:
            continue
        records: list[Record] = []
        for line in lines[1:end] + lines[end + 1:]:
            fields = line.split()
            if len(fields) == 4 and all(f.isdigit() for f in fields):
                records.append((int(fields[0]), int(fields[1]), int(fields[2]), int(fields[3])))
        if best is None or generation > best[0]:
            best = (generation, records)
    return best[1] if best else []

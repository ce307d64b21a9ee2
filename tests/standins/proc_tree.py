"""Stand-in: a service that builds a process tree that is hard to stop, then idles.

Each argument adds one process:
  ignore   a child that ignores SIGTERM
  setsid   a child that calls setsid() (new session and group) and ignores SIGTERM
  orphan   a double-forked, setsid'd grandchild that ignores SIGTERM; its parent exits, so it is
           re-parented to the subreaper: only the QASUP_INSTANCE tag still ties it to the service
  --exit   the leader exits 0 once the tree is up (instead of idling)
When every process is set up, prints one JSON line {"leader": pid, "members": {mode: pid, ...}}.
"""

import json
import os
import signal
import sys


def idle_ignoring_term(ready_fd: int, mode: str) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode != "ignore":
        os.setsid()
    os.write(ready_fd, f"{mode} {os.getpid()}\n".encode())
    os.close(ready_fd)
    while True:
        signal.pause()


def main() -> None:
    modes = [a for a in sys.argv[1:] if a != "--exit"]
    read_fd, write_fd = os.pipe()
    for mode in modes:
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            if mode == "orphan":
                if os.fork() != 0:
                    os._exit(0)
                idle_ignoring_term(write_fd, mode)
            idle_ignoring_term(write_fd, mode)
        if mode == "orphan":
            os.waitpid(pid, 0)
    os.close(write_fd)
    pids = {}
    with os.fdopen(read_fd) as ready:
        for _ in modes:
            mode, pid = ready.readline().split()
            pids[mode] = int(pid)
    print(json.dumps({"leader": os.getpid(), "members": pids}), flush=True)
    if "--exit" in sys.argv:
        os._exit(0)
    while True:
        signal.pause()


main()

"""Stand-in service with a stubborn tree: a child that ignores SIGTERM, and a setsid'd, double-forked
daemon that ignores SIGTERM too. Writes "child daemon" pids to the file $TREE_PIDS, prints "tree up",
and waits (the leader itself exits on SIGTERM).
"""

import os
import signal
import time


def stubborn() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(3600)


r, w = os.pipe()
child = os.fork()
if child == 0:
    stubborn()
mid = os.fork()
if mid == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, f"{os.getpid()}\n".encode())
        stubborn()
    os._exit(0)
os.waitpid(mid, 0)
daemon = int(os.read(r, 64).decode().strip())
tmp = os.environ["TREE_PIDS"] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{child} {daemon}\n")
os.replace(tmp, os.environ["TREE_PIDS"])
print("tree up", flush=True)
while True:
    time.sleep(3600)

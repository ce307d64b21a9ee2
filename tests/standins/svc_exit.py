"""Stand-in service: optionally orphans N grandchildren (fork, fork, the middle one exits), prints
--say lines, waits --delay seconds, then exits with --code or kills itself with --signal.

usage: svc_exit.py [--orphans N] [--say TEXT]... [--delay S] [--code C | --signal N]
"""

import argparse
import os
import signal
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--orphans", type=int, default=0)
p.add_argument("--say", action="append", default=[])
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--code", type=int, default=0)
p.add_argument("--signal", type=int, default=0)
a = p.parse_args()
for _ in range(a.orphans):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)      # the grandchild: re-parented to the subreaper (or PID 1), reaped there
        os._exit(0)
    os.waitpid(pid, 0)
for line in a.say:
    print(line)
sys.stdout.flush()
time.sleep(a.delay)
if a.signal:
    if a.signal not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(a.signal, signal.SIG_DFL)
    os.kill(os.getpid(), a.signal)
    time.sleep(5)
os._exit(a.code)

"""Stand-in: an orphan storm. Forks N children that each fork a grandchild and exit at once, so
N grandchildren are orphaned (re-parented to the nearest subreaper or PID 1) and exit there.
Reaps its own direct children, then exits with the given code.

usage: proc_storm.py N EXIT_CODE
"""

import os
import sys


def main() -> None:
    count, code = int(sys.argv[1]), int(sys.argv[2])
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            if os.fork() == 0:
                os._exit(0)  # the grandchild: an orphan by the time it exits, mostly
            os._exit(0)
        os.waitpid(pid, 0)
    sys.stdout.flush()
    os._exit(code)


main()

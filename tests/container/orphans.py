"""Run inside the container (``podman exec -i C python - N FILE < orphans.py``): makes N orphans at once.

Forks N children, then exits. Each child waits until it has been re-parented to PID 1 (qasup), writes one byte
to FILE (``R`` re-parented to PID 1, ``X`` not within 30 s), then exits, so PID 1 receives a storm of N exits of
processes it never started; every one must be reaped (no zombie). Standard library only (it runs with qasup's
own python in the image).
"""

import os
import sys
import time

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
out = os.open(sys.argv[2] if len(sys.argv) > 2 else "/tmp/orphans.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC
              | os.O_APPEND, 0o644)
r, w = os.pipe()
for _ in range(n):
    if os.fork() == 0:
        os.close(w)
        os.read(r, 1)                      # EOF when the parent has exited
        deadline = time.monotonic() + 30
        while os.getppid() != 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        os.write(out, b"R" if os.getppid() == 1 else b"X")
        os._exit(0)
os.close(r)
os._exit(0)

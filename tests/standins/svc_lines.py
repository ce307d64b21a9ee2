"""Stand-in service: writes COUNT numbered lines of exactly SIZE bytes (newline included) to stdout as
fast as it can, then a last line "done" without waiting, then sleeps (--exit: exits at once).

usage: svc_lines.py COUNT SIZE [--exit]
"""

import os
import sys
import time

count, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
batch = []
for i in range(count):
    head = b"line %09d " % i
    batch.append(head + b"x" * (size - len(head) - 1) + b"\n")
    if len(batch) == 1000:
        out.write(b"".join(batch))
        batch = []
out.write(b"".join(batch) + b"done\n")
out.flush()
if "--exit" in sys.argv:
    os._exit(0)
while True:
    time.sleep(3600)

"""Run inside the container (``podman exec -i C python - < procs.py``): one line, ``TOTAL ZOMBIES ORPHANS``.

TOTAL: processes in the container's pid namespace; ZOMBIES: those in state Z (exited, not reaped);
ORPHANS: live processes run as ``python - ...`` other than this one (orphans.py and its children).
"""

import os

total = zombies = orphans = 0
me = os.getpid()
for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) == me:
        continue
    try:
        with open(f"/proc/{entry}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        continue
    state = stat.rpartition(b")")[2].split()[0]
    total += 1
    zombies += state == b"Z"
    orphans += state != b"Z" and cmdline.split(b"\0")[1:2] == [b"-"]   # argv of ``python - N`` (orphans.py)
print(total, zombies, orphans)

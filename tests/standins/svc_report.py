"""Stand-in service: writes what it was started with (argv, cwd, selected environment, pid, process group,
session) as JSON to the file named by $REPORT, prints "report written", then sleeps until signalled.

usage: svc_report.py [ARG...]        env: REPORT=path, REPORT_VARS=comma-separated names to copy
"""

import json
import os
import sys
import time

names = [n for n in os.environ.get("REPORT_VARS", "").split(",") if n]
doc = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "pgid": os.getpgid(0),
       "sid": os.getsid(0), "ppid": os.getppid(), "env": {n: os.environ.get(n) for n in names}}
tmp = os.environ["REPORT"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(doc, f)
os.replace(tmp, os.environ["REPORT"])
print("report written", flush=True)
while True:
    time.sleep(3600)

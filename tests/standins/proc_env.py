"""Stand-in: prints one JSON line describing itself (cwd, argv, session, group, chosen variables)
on stdout and a marker line on stderr, then exits with the code given by --exit (default 0).

usage: proc_env.py [--exit N] [--bulk BYTES] VAR...
"""

import json
import os
import sys

args = sys.argv[1:]
code = 0
bulk = 0
while args and args[0].startswith("--"):
    flag, value, args = args[0], args[1], args[2:]
    if flag == "--exit":
        code = int(value)
    elif flag == "--bulk":
        bulk = int(value)
if bulk:
    sys.stdout.write("x" * bulk + "\n")
info = {
    "pid": os.getpid(),
    "cwd": os.getcwd(),
    "sid": os.getsid(0),
    "pgid": os.getpgid(0),
    "env": {name: os.environ.get(name) for name in args},
}
print(json.dumps(info), flush=True)
print("to-stderr", file=sys.stderr, flush=True)
raise SystemExit(code)

"""A real Sanic 25 application with 4 worker processes, for the integration suite (tests/integration/test_sanic.py).

    python -u sanic_workers.py PORT [WORKERS]          # app.run(workers=4): how QAnything's sanic_api.py runs
    PYTHONPATH=tests/apps sanic sanic_workers:app --port PORT --workers 4   # the sanic CLI (boxed tracebacks)

Routes: ``/api/health``; ``/pid`` (the worker's pid and its parent); ``/slow?s=2&tag=T`` answers after ``s``
seconds and prints ``slow request T started`` when it begins, so a test knows the request is in flight.

``IT_SANIC_FAIL=connect`` makes every worker fail in ``before_server_start`` the way QAnything's API fails when
its databases are down: a connection refused while connecting at start-up (to port 1 of 127.0.0.1 here).
``IT_SANIC_FAIL=import``: the module imports a package that is not installed (a missing dependency).
"""

import asyncio
import os
import socket
import sys

from sanic import Sanic
from sanic.response import json

if os.environ.get("IT_SANIC_FAIL") == "import":
    import qasup_it_no_such_dependency  # noqa: F401

app = Sanic("qasup_it_workers")


@app.before_server_start
async def connect_databases(app):
    if os.environ.get("IT_SANIC_FAIL") == "connect":
        socket.create_connection(("127.0.0.1", 1), timeout=2)


@app.get("/api/health")
async def health(request):
    return json({"status": "ok"})


@app.get("/pid")
async def pid(request):
    return json({"pid": os.getpid(), "ppid": os.getppid()})


@app.get("/slow")
async def slow(request):
    tag = request.args.get("tag", "-")
    print(f"slow request {tag} started in worker {os.getpid()}", flush=True)
    await asyncio.sleep(float(request.args.get("s", "2")))
    return json({"tag": tag, "pid": os.getpid(), "done": True})


if __name__ == "__main__":
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    app.run(host="127.0.0.1", port=int(sys.argv[1]), workers=workers, access_log=False)

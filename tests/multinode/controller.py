"""Stand-in FastChat controller for the multi-node test: FastChat's controller HTTP API shape, no model code.

usage: controller.py [--host 0.0.0.0] [--port 7800] [--expiry S] [--table FILE]

* ``POST /register_worker`` ``{"worker_name": URL, "check_heart_beat": true, "worker_status": {"model_names":
  [...], "speed": 1, "queue_length": 0}}``: adds the worker (FastChat answers 200 with no body).
* ``POST /receive_heart_beat`` ``{"worker_name": URL, "queue_length": N}``: ``{"exist": true|false}``.
* ``POST /list_models``: ``{"models": [...]}``, every model name of every worker still known, sorted.
* ``POST /get_worker_address`` ``{"model": NAME}``: ``{"address": URL}`` (``""`` when none serves it).

The worker table lives in memory only, as FastChat's does: a restarted controller knows no worker. A worker whose
last heart beat (or registration) is older than ``--expiry`` seconds is dropped, as FastChat drops one after
``CONTROLLER_HEART_BEAT_EXPIRATION`` (90 s). Every change of the table is written to ``--table`` (JSON, replaced
atomically: ``{"pid": ..., "workers": {URL: [models]}, "log": [[time, "registered"|"expired", URL], ...]}``) so
that the test can read it without a network of its own, and said on stdout.
"""

import argparse
import http.server
import json
import os
import threading
import time

p = argparse.ArgumentParser()
p.add_argument("--host", default="0.0.0.0")
p.add_argument("--port", type=int, default=7800)
p.add_argument("--expiry", type=float, default=90.0)
p.add_argument("--table")
a = p.parse_args()

lock = threading.Lock()
workers: dict[str, dict] = {}   # URL -> {"models": [...], "beat": monotonic time}
log: list[list] = []


def save() -> None:
    """Write the table file (called with the lock held)."""
    if not a.table:
        return
    tmp = a.table + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "workers": {w: v["models"] for w, v in workers.items()}, "log": log}, f)
    os.replace(tmp, a.table)


def note(event: str, name: str) -> None:
    log.append([time.time(), event, name])
    print(f"controller: {event} {name}", flush=True)
    save()


def expire() -> None:
    now = time.monotonic()
    for name in [w for w, v in workers.items() if now - v["beat"] > a.expiry]:
        del workers[name]
        note("expired", name)


def reaper() -> None:
    while True:
        time.sleep(a.expiry / 4)
        with lock:
            expire()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, obj) -> None:
        data = b"" if obj is None else json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(n) or b"{}")
        except ValueError:
            body = {}
        with lock:
            expire()
            if self.path == "/register_worker":
                name = body["worker_name"]
                workers[name] = {"models": list(body["worker_status"]["model_names"]), "beat": time.monotonic()}
                note("registered", name)
                return self._answer(None)
            if self.path == "/receive_heart_beat":
                w = workers.get(body.get("worker_name"))
                if w is not None:
                    w["beat"] = time.monotonic()
                return self._answer({"exist": w is not None})
            if self.path == "/list_models":
                return self._answer({"models": sorted({m for w in workers.values() for m in w["models"]})})
            if self.path == "/get_worker_address":
                found = [w for w, v in workers.items() if body.get("model") in v["models"]]
                return self._answer({"address": found[0] if found else ""})
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


server = http.server.ThreadingHTTPServer((a.host, a.port), Handler)
server.daemon_threads = True
with lock:
    save()
threading.Thread(target=reaper, daemon=True).start()
print(f"controller: listening on {a.host}:{a.port}", flush=True)
server.serve_forever()

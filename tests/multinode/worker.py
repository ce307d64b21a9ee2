"""Stand-in FastChat model worker for the multi-node test: registers with the controller by its own address and
heart-beats, as FastChat's model_worker does; serves ``POST /worker_get_status`` on its own port.

usage: worker.py --controller HOST:PORT --host ADDR [--port 7801] [--model NAME] [--load S] [--beat S]

After ``--load`` seconds (the model loading) it listens on 0.0.0.0:PORT and registers as ``http://ADDR:PORT``
under two model names: ``NAME`` (what clients ask for, shared by every replica) and ``NAME@ADDR`` (FastChat's
``--model-names`` takes several names; the second one lets this worker's own probe see that *it* is
registered). A failed registration exits 1, as FastChat's worker does. It heart-beats every ``--beat``
seconds and never registers again by itself: FastChat's worker does so at its next heart beat, 45 s later, so
a re-registration the test sees within seconds is qasup restarting the worker.
"""

import argparse
import http.server
import json
import sys
import threading
import time
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("--controller", required=True)
p.add_argument("--host", required=True)
p.add_argument("--port", type=int, default=7801)
p.add_argument("--model", default="qm-chat")
p.add_argument("--load", type=float, default=0.0)
p.add_argument("--beat", type=float, default=45.0)
a = p.parse_args()
me = f"http://{a.host}:{a.port}"
names = [a.model, f"{a.model}@{a.host}"]


def post(path: str, obj: dict) -> bytes:
    req = urllib.request.Request(f"http://{a.controller}{path}", data=json.dumps(obj).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=2) as r:
        return r.read()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        data = json.dumps({"model_names": names, "speed": 1, "queue_length": 0}).encode()
        self.send_response(200 if self.path == "/worker_get_status" else 404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


time.sleep(a.load)
server = http.server.ThreadingHTTPServer(("0.0.0.0", a.port), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
try:
    post("/register_worker", {"worker_name": me, "check_heart_beat": True,
                              "worker_status": {"model_names": names, "speed": 1, "queue_length": 0}})
except OSError as e:
    print(f"worker: cannot register with the controller at {a.controller}: {e}", flush=True)
    sys.exit(1)
print(f"worker: registered {me} as {names}", flush=True)
said = "the controller knows this worker"
while True:
    time.sleep(a.beat)
    try:
        exist = json.loads(post("/receive_heart_beat", {"worker_name": me, "queue_length": 0}))["exist"]
        now = ("the controller knows this worker" if exist else
               "the controller does not know this worker (it registers only at its start)")
    except (OSError, ValueError, KeyError) as e:
        now = f"heart beat failed: {e}"
    if now != said:   # said once per change, not at every beat
        said = now
        print(f"worker: {now}", flush=True)

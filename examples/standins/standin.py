#!/usr/bin/env python3
"""Stand-ins for QAnything's services, for the demo stack and tests (standard library only).

Each role behaves, as seen from outside, like the service it replaces: it "loads" for a few seconds,
prints the service's real start-up markers, then answers the real health URLs on the real ports, and
stops promptly on SIGTERM or SIGINT. Roles (first argument):

    triton               Triton: GET /v2/health/ready on --http-port; --grpc-port and --metrics-port listen too
    llm-relay            llm_server_entrypoint.py: GET /health/ready on --port; needs Triton's --model-url
    fastchat-controller  POST /register_worker, /receive_heart_beat, /list_models, /get_worker_address
    fastchat-openai-api  GET /v1/models (asks the controller given by --controller-address)
    fastchat-worker      registers its model with the controller, then serves POST /worker_get_status
    rerank | ocr | sanic Sanic apps: print "[...] [PID] [INFO] Starting worker [PID]"; sanic serves
                         GET /qanything/ and /api/health

Arguments are the real services' own (``--http-port=10000``, ``--port 7801``, ``--model-path ...``); those a
stand-in does not need are accepted and ignored. ``--name`` is the service name used to pick settings below.

Environment (a value is either ``VALUE`` for every stand-in, or ``NAME=VALUE,...`` keyed by service name or
role; both forms can be mixed, e.g. ``STANDIN_FAIL=vllm-worker=oom``):

    STANDIN_LOAD_SECONDS  how long "loading" takes (default 1.5 for model servers, 1 for the rest)
    STANDIN_FAIL          oom: print a CUDA out-of-memory traceback while loading and exit 1
                          crash: exit 3 at once; hang: never become ready (but stop on SIGTERM)
                          traceback: print a Python traceback and exit 1; nccl: print an NCCL error, exit 1
                          late-oom: become ready, then after STANDIN_LATE_SECONDS (2) print the OOM and exit 1
    STANDIN_BIND          address to listen on (default 127.0.0.1, whatever --host says)
    STANDIN_HEARTBEAT_EXPIRATION / STANDIN_HEARTBEAT_INTERVAL   FastChat's 90 s / 45 s
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAIL_MODES = ("oom", "crash", "hang", "traceback", "nccl", "late-oom")
MODEL_SERVERS = ("triton", "fastchat-worker")
OOM_LINE = ("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB "
            "(GPU 0; 23.65 GiB total capacity; 21.87 GiB already allocated; 1.12 GiB free; "
            "22.01 GiB reserved in total by PyTorch)")

Route = Callable[[bytes], tuple[int, str, bytes]]


def say(*lines: str) -> None:
    """Print lines at once (the supervisor captures a pipe: never leave output in a buffer)."""
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def setting(var: str, name: str, role: str, default: str | None) -> str | None:
    """``VAR=VALUE`` or ``VAR=NAME=VALUE,...``: the value for this service (by name, then role), else default."""
    raw = os.environ.get(var, "").strip()
    keyed: dict[str, str] = {}
    bare = default
    for item in filter(None, (p.strip() for p in raw.split(","))):
        if "=" in item:
            k, v = item.split("=", 1)
            keyed[k.strip()] = v.strip()
        else:
            bare = item
    return keyed.get(name, keyed.get(role, bare))


def json_reply(obj: object, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(obj).encode()


def post_json(url: str, payload: object, timeout: float = 3.0) -> object:
    """POST JSON, return the decoded answer; 0.0.0.0 (as the real commands say) means this host."""
    parts = urlsplit(url)
    if parts.hostname == "0.0.0.0":
        url = url.replace("0.0.0.0", "127.0.0.1", 1)
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class Server:
    """One HTTP listener with a small route table, served from a daemon thread."""

    def __init__(self, bind: str, port: int, routes: dict[tuple[str, str], Route]):
        handler = type("Handler", (_Handler,), {"routes": routes})
        self.httpd = ThreadingHTTPServer((bind, port), handler)   # OSError if the port is taken
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], Route] = {}
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        route = self.routes.get((method, path))
        if route is None:
            status, ctype, data = 404, "application/json", b'{"error": "not found"}'
        else:
            try:
                status, ctype, data = route(body)
            except Exception as e:  # a bad request must never kill the stand-in
                status, ctype, data = 500, "application/json", json.dumps({"error": str(e)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: object) -> None:  # no access log: probes would flood it
        pass


class StandIn:
    """Shared life cycle: load, maybe fail, listen, print markers, wait for a stop signal."""

    role = ""
    load_default = 1.0

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.name = args.name or self.role
        self.pid = os.getpid()
        self.stop = threading.Event()   # set by the main thread once a stop signal came (see wait)
        self.signalled = False          # set by the signal handler: nothing else is safe there
        self.servers: list[Server] = []
        self.sockets: list[socket.socket] = []
        self.bind = os.environ.get("STANDIN_BIND", "127.0.0.1")
        self.fail = setting("STANDIN_FAIL", self.name, self.role, "") or ""
        self.load_s = float(setting("STANDIN_LOAD_SECONDS", self.name, self.role, None) or self.load_default)
        self.late_s = float(setting("STANDIN_LATE_SECONDS", self.name, self.role, "2") or 2)

    # -- hooks the roles override
    def loading_lines(self) -> list[str]:
        return []

    def before_listen(self) -> int | None:
        """Work done after loading and before listening (registering, connecting); an int = exit code."""
        return None

    def listen(self) -> None:
        raise NotImplementedError

    def ready_lines(self) -> list[str]:
        return []

    def stopping_lines(self) -> list[str]:
        return []

    def port_in_use_lines(self, port: int) -> list[str]:
        return [f"OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', {port}): "
                "address already in use"]

    def traceback_lines(self) -> list[str]:
        return ["Traceback (most recent call last):",
                f'  File "/workspace/qanything_local/{self.role}.py", line 42, in <module>',
                "    main()",
                f"RuntimeError: simulated failure of {self.name} (STANDIN_FAIL=traceback)"]

    # -- helpers
    def serve(self, port: int, routes: dict[tuple[str, str], Route]) -> None:
        server = Server(self.bind, port, routes)
        self.servers.append(server)
        server.start()

    def hold_port(self, port: int) -> None:
        """Listen on a port without answering (Triton's gRPC port): enough for TCP probes and conflicts."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((self.bind, port))
        except OSError:
            s.close()
            raise
        s.listen(16)
        self.sockets.append(s)

    def oom(self) -> int:
        say("Traceback (most recent call last):",
            f'  File "/workspace/qanything_local/{self.role}.py", line 118, in load_model',
            "    model = model.cuda()",
            OOM_LINE)
        return 1

    def wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True when a stop signal came.

        The signal handler only sets a flag: calling ``Event.set()`` from a handler deadlocks when the signal
        lands while this thread holds the Event's own lock (inside ``Event.wait``). The main thread sleeps in
        short steps (a signal interrupts ``time.sleep`` at once) and sets the Event itself, outside any
        handler, to wake the helper threads."""
        deadline = time.monotonic() + seconds
        while not self.signalled:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        self.stop.set()
        return True

    # -- the life cycle
    def run(self) -> int:
        if self.fail and self.fail not in FAIL_MODES:
            say(f"stand-in {self.name}: unknown STANDIN_FAIL mode {self.fail!r} (use {', '.join(FAIL_MODES)})")
            return 2
        if self.fail == "crash":
            return 3
        say(*self.loading_lines())
        if self.wait(self.load_s):
            return 0
        if self.fail == "oom":
            return self.oom()
        if self.fail == "traceback":
            say(*self.traceback_lines())
            return 1
        if self.fail == "nccl":
            say("torch.distributed.DistBackendError: NCCL error in: "
                "../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1275, unhandled cuda error, "
                "NCCL version 2.18.1",
                "ncclUnhandledCudaError: Call to CUDA function failed.")
            return 1
        if self.fail == "hang":
            while not self.wait(0.2):
                pass
            return 0
        code = self.before_listen()
        if code is not None:
            return code
        try:
            self.listen()
        except OSError as e:
            port = getattr(e, "standin_port", 0)
            say(*self.port_in_use_lines(port))
            self.close()
            return 1
        say(*self.ready_lines())
        deadline = time.monotonic() + self.late_s if self.fail == "late-oom" else None
        while not self.wait(0.2):
            if deadline is not None and time.monotonic() >= deadline:
                self.close()
                return self.oom()
        say(*self.stopping_lines())
        self.close()
        return 0

    def close(self) -> None:
        for s in self.servers:
            s.close()
        for s in self.sockets:
            s.close()
        self.servers, self.sockets = [], []

    def bind_port(self, port: int, action: Callable[[], None]) -> None:
        try:
            action()
        except OSError as e:
            e.standin_port = port  # type: ignore[attr-defined]
            raise


# ---------------------------------------------------------------------------------------------- Triton


def glog(level: str, where: str, text: str) -> str:
    now = _dt.datetime.now()
    return f"{level}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {os.getpid()} {where}] {text}"


class Triton(StandIn):
    role = "triton"
    load_default = 1.5

    def models(self) -> list[str]:
        store = os.path.basename((self.args.model_store or "").rstrip("/"))
        return {"QAEnsemble_base": ["base"], "QAEnsemble_embed_rerank": ["embed", "rerank"]}.get(
            store, ["base", "embed", "rerank"])

    def loading_lines(self) -> list[str]:
        lines = [glog("I", "cuda_memory_manager.cc:107", "CUDA memory pool is created on device 0 with size 67108864")]
        lines += [glog("I", "model_lifecycle.cc:462", f"loading: {m}:1") for m in self.models()]
        return lines

    def listen(self) -> None:
        a = self.args
        routes: dict[tuple[str, str], Route] = {
            ("GET", "/v2/health/ready"): lambda _b: (200, "text/plain", b""),
            ("GET", "/v2/health/live"): lambda _b: (200, "text/plain", b""),
            ("GET", "/v2"): lambda _b: json_reply({"name": "triton", "version": "2.41.0"}),
        }
        self.bind_port(a.grpc_port, lambda: self.hold_port(a.grpc_port))
        self.bind_port(a.http_port, lambda: self.serve(a.http_port, routes))
        metrics: dict[tuple[str, str], Route] = {("GET", "/metrics"): lambda _b: (200, "text/plain", b"")}
        self.bind_port(a.metrics_port, lambda: self.serve(a.metrics_port, metrics))

    def ready_lines(self) -> list[str]:
        a = self.args
        lines = [glog("I", "model_lifecycle.cc:818", f"successfully loaded '{m}' version 1") for m in self.models()]
        return lines + [
            glog("I", "grpc_server.cc:2451", f"Started GRPCInferenceService at 0.0.0.0:{a.grpc_port}"),
            glog("I", "http_server.cc:3558", f"Started HTTPService at 0.0.0.0:{a.http_port}"),
            glog("I", "http_server.cc:187", f"Started Metrics Service at 0.0.0.0:{a.metrics_port}"),
        ]

    def port_in_use_lines(self, port: int) -> list[str]:
        return [glog("E", "main.cc:245", f"failed to start HTTP service: Unavailable - Socket '0.0.0.0:{port}' "
                                        "already in use")]

    def stopping_lines(self) -> list[str]:
        return ["Signal (15) received.", glog("I", "server.cc:305", "Waiting for in-flight requests to complete.")]


# ---------------------------------------------------------------------------------------------- Sanic apps


def sanic_line(text: str) -> str:
    now = _dt.datetime.now().astimezone()
    return f"[{now:%Y-%m-%d %H:%M:%S %z}] [{os.getpid()}] [INFO] {text}"


class SanicApp(StandIn):
    """The Sanic-based services: rerank (8776), ocr (8010), sanic_api (8777), the LLM relay (36001)."""

    default_port = 8000
    app_name = "app"

    def port(self) -> int:
        return self.args.port or self.default_port

    def routes(self) -> dict[tuple[str, str], Route]:
        return {}

    def loading_lines(self) -> list[str]:
        return [sanic_line(f"{self.app_name}: loading models")]

    def listen(self) -> None:
        self.bind_port(self.port(), lambda: self.serve(self.port(), self.routes()))

    def ready_lines(self) -> list[str]:
        return [sanic_line("Sanic v23.6.0"), sanic_line(f"Goin' Fast @ http://0.0.0.0:{self.port()}"),
                sanic_line(f"Starting worker [{self.pid}]")]

    def stopping_lines(self) -> list[str]:
        return [sanic_line(f"Stopping worker [{self.pid}]")]


class Rerank(SanicApp):
    role, default_port, app_name = "rerank", 8776, "rerank_server"

    def routes(self) -> dict[tuple[str, str], Route]:
        def rerank(body: bytes) -> tuple[int, str, bytes]:
            passages = (json.loads(body or b"{}") or {}).get("passages") or []
            return json_reply([round(1.0 / (i + 1), 4) for i in range(len(passages))])
        return {("POST", "/rerank"): rerank}


class Ocr(SanicApp):
    role, default_port, app_name = "ocr", 8010, "OCRService"

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("POST", "/ocr"): lambda _b: json_reply({"results": []})}


class Sanic(SanicApp):
    role, default_port, app_name = "sanic", 8777, "QAnything"

    def routes(self) -> dict[tuple[str, str], Route]:
        page = b"<!doctype html><title>QAnything (stand-in)</title><h1>QAnything</h1>\n"
        health = lambda _b: json_reply({"status": "ok", "mode": self.args.mode})  # noqa: E731
        return {("GET", "/qanything/"): lambda _b: (200, "text/html; charset=utf-8", page),
                ("GET", "/qanything"): lambda _b: (200, "text/html; charset=utf-8", page),
                ("GET", "/api/health"): health, ("GET", "/api/health_check"): health}


class LlmRelay(SanicApp):
    role, default_port, app_name = "llm-relay", 36001, "LLMService"

    def before_listen(self) -> int | None:
        host, _, port = (self.args.model_url or "localhost:10001").rpartition(":")
        host = "127.0.0.1" if host in ("0.0.0.0", "localhost", "") else host
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except OSError:
            say("Traceback (most recent call last):",
                '  File "llm_server_entrypoint.py", line 56, in <module>',
                "    model = QwenTritonModel(model_url=args.model_url)",
                "tritonclient.utils.InferenceServerException: [StatusCode.UNAVAILABLE] failed to connect to all "
                f"addresses; last error: UNKNOWN: ipv4:{host}:{port}: Failed to connect to remote host: "
                "Connection refused")
            return 1
        return None

    def routes(self) -> dict[tuple[str, str], Route]:
        return {("GET", "/health/ready"): lambda _b: (200, "text/plain", b"HTTP/1.1 200 OK"),
                ("POST", "/worker_get_status"): lambda _b: json_reply({"queue_length": 0})}


# ---------------------------------------------------------------------------------------------- FastChat


def uvicorn_lines(port: int) -> list[str]:
    return [f"INFO:     Started server process [{os.getpid()}]", "INFO:     Waiting for application startup.",
            "INFO:     Application startup complete.",
            f"INFO:     Uvicorn running on http://0.0.0.0:{port} (Press CTRL+C to quit)"]


def fastchat_log(module: str, text: str) -> str:
    return f"{_dt.datetime.now():%Y-%m-%d %H:%M:%S} | INFO | {module} | {text}"


class Uvicorn(StandIn):
    default_port = 8000

    def port(self) -> int:
        return self.args.port or self.default_port

    def routes(self) -> dict[tuple[str, str], Route]:
        return {}

    def listen(self) -> None:
        self.bind_port(self.port(), lambda: self.serve(self.port(), self.routes()))

    def ready_lines(self) -> list[str]:
        return uvicorn_lines(self.port())

    def stopping_lines(self) -> list[str]:
        return ["INFO:     Shutting down", "INFO:     Waiting for application shutdown.",
                "INFO:     Application shutdown complete.", f"INFO:     Finished server process [{self.pid}]"]

    def port_in_use_lines(self, port: int) -> list[str]:
        return [f"ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', {port}): "
                "address already in use"]


class Controller(Uvicorn):
    """FastChat's controller: workers register and send heart beats; stale ones expire (90 s by default)."""

    role, default_port, load_default = "fastchat-controller", 21001, 0.5

    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.lock = threading.Lock()
        self.workers: dict[str, dict[str, object]] = {}
        self.expiration = float(os.environ.get("STANDIN_HEARTBEAT_EXPIRATION", "90"))

    def loading_lines(self) -> list[str]:
        return [fastchat_log("controller", f"args: Namespace(host='0.0.0.0', port={self.port()}, "
                                           "dispatch_method='shortest_queue', ssl=False)"),
                fastchat_log("controller", "Init controller")]

    def before_listen(self) -> int | None:
        threading.Thread(target=self._expire, daemon=True).start()
        return None

    def _expire(self) -> None:
        while not self.stop.wait(min(self.expiration / 3, 5.0)):
            cutoff = time.monotonic() - self.expiration
            with self.lock:
                for name in [n for n, w in self.workers.items() if float(w["last"]) < cutoff]:  # type: ignore[arg-type]
                    del self.workers[name]
                    say(fastchat_log("controller", f"Remove stale worker: {name}"))

    def routes(self) -> dict[tuple[str, str], Route]:
        def register(body: bytes) -> tuple[int, str, bytes]:
            data = json.loads(body)
            name, status = data["worker_name"], data.get("worker_status") or {}
            with self.lock:
                self.workers[name] = {"models": list(status.get("model_names") or []), "last": time.monotonic()}
            say(fastchat_log("controller", f"Register a new worker: {name}"),
                fastchat_log("controller", f"Register done: {name}, {status}"))
            return json_reply(None)

        def heart_beat(body: bytes) -> tuple[int, str, bytes]:
            name = json.loads(body)["worker_name"]
            with self.lock:
                exist = name in self.workers
                if exist:
                    self.workers[name]["last"] = time.monotonic()
            return json_reply({"exist": exist})

        def list_models(_b: bytes) -> tuple[int, str, bytes]:
            with self.lock:
                models = sorted({m for w in self.workers.values() for m in w["models"]})  # type: ignore[attr-defined]
            return json_reply({"models": models})

        def worker_address(body: bytes) -> tuple[int, str, bytes]:
            model = json.loads(body).get("model")
            with self.lock:
                addr = next((n for n, w in self.workers.items() if model in w["models"]), "")  # type: ignore[operator]
            return json_reply({"address": addr})

        return {("POST", "/register_worker"): register, ("POST", "/receive_heart_beat"): heart_beat,
                ("POST", "/list_models"): list_models, ("POST", "/refresh_all_workers"): lambda _b: json_reply(None),
                ("POST", "/get_worker_address"): worker_address,
                ("GET", "/test_connection"): lambda _b: (200, "text/plain", b"success")}


class OpenAIApi(Uvicorn):
    role, default_port, load_default = "fastchat-openai-api", 8000, 0.5

    def routes(self) -> dict[tuple[str, str], Route]:
        def models(_b: bytes) -> tuple[int, str, bytes]:
            answer = post_json(self.args.controller_address.rstrip("/") + "/list_models", None)
            names = answer.get("models", []) if isinstance(answer, dict) else []
            return json_reply({"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "fastchat", "root": m} for m in names]})
        return {("GET", "/v1/models"): models}


class Worker(Uvicorn):
    """A FastChat model worker (model_worker / vllm_worker / sglang_worker): registers, then heart beats."""

    role, default_port = "fastchat-worker", 21002
    load_default = 1.5

    def model_names(self) -> list[str]:
        if self.args.model_names:
            return [n for n in self.args.model_names.split(",") if n]
        return [os.path.basename((self.args.model_path or "model").rstrip("/"))]

    def loading_lines(self) -> list[str]:
        worker = {"vllm": "vllm_worker", "sglang": "sglang_worker"}.get(self.args.flavor, "model_worker")
        return [fastchat_log(worker, f"Loading the model {self.model_names()} on worker {self.pid:08x} ...")]

    def before_listen(self) -> int | None:
        path = self.args.model_path
        if path and not os.path.isfile(os.path.join(path, "config.json")):
            say("Traceback (most recent call last):",
                '  File "/usr/local/lib/python3.10/dist-packages/transformers/configuration_utils.py", line 675',
                f"OSError: {path} does not appear to have a file named config.json. Checkout "
                f"'https://huggingface.co/{path}/None' for available files.")
            return 1
        try:
            self.register()
        except (OSError, ValueError) as e:
            say("Traceback (most recent call last):",
                '  File "fastchat/serve/base_model_worker.py", line 72, in register_to_controller',
                f"requests.exceptions.ConnectionError: {self.args.controller_address}/register_worker: {e}")
            return 1
        threading.Thread(target=self._heart_beat, daemon=True).start()
        return None

    def register(self) -> None:
        post_json(self.args.controller_address.rstrip("/") + "/register_worker", {
            "worker_name": self.args.worker_address, "check_heart_beat": True,
            "worker_status": {"model_names": self.model_names(), "speed": 1, "queue_length": 0},
            "multimodal": False})

    def _heart_beat(self) -> None:
        interval = float(os.environ.get("STANDIN_HEARTBEAT_INTERVAL", "45"))
        url = self.args.controller_address.rstrip("/") + "/receive_heart_beat"
        while not self.stop.wait(interval):
            try:
                answer = post_json(url, {"worker_name": self.args.worker_address, "queue_length": 0})
                if isinstance(answer, dict) and not answer.get("exist"):
                    self.register()
            except (OSError, ValueError) as e:
                say(fastchat_log("model_worker", f"heart beat error: {e}"))

    def routes(self) -> dict[tuple[str, str], Route]:
        status = lambda _b: json_reply({"model_names": self.model_names(), "speed": 1, "queue_length": 0})  # noqa: E731
        return {("POST", "/worker_get_status"): status,
                ("POST", "/model_details"): lambda _b: json_reply({"context_length": 4096}),
                ("POST", "/count_token"): lambda b: json_reply({"count": len(b.split()), "error_code": 0}),
                ("POST", "/worker_generate"): lambda _b: json_reply({"text": "stand-in answer", "error_code": 0})}


ROLES: dict[str, type[StandIn]] = {c.role: c for c in (Triton, LlmRelay, Controller, OpenAIApi, Worker, Rerank, Ocr,
                                                       Sanic)}


def parse(argv: list[str]) -> tuple[type[StandIn], argparse.Namespace]:
    p = argparse.ArgumentParser(prog="standin.py", description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--name", default="", help="the service name (selects STANDIN_* settings)")
    p.add_argument("--flavor", default="hf", choices=("hf", "vllm", "sglang"), help="fastchat-worker kind")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--model-store", "--model-repository", default="")
    p.add_argument("--model-url", default="localhost:10001")
    p.add_argument("--model-path", default="")
    p.add_argument("--model-names", default="")
    p.add_argument("--controller-address", default="http://localhost:21001")
    p.add_argument("--worker-address", default="http://localhost:21002")
    p.add_argument("--mode", default="local")
    args, _ignored = p.parse_known_args(argv)   # the real services' other flags are accepted as-is
    return ROLES[args.role], args


def main(argv: list[str] | None = None) -> int:
    cls, args = parse(sys.argv[1:] if argv is None else argv)
    standin = cls(args)

    def on_signal(signum: int, _frame: object) -> None:
        standin.signalled = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return standin.run()


if __name__ == "__main__":
    sys.exit(main())

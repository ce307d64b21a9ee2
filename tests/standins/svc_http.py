"""Stand-in HTTP service: after --delay seconds, listens on 127.0.0.1:PORT; POST /models answers
200 with the body --body, GET / answers 200 "ok", everything else 404.

usage: svc_http.py PORT [--delay S] [--body TEXT] [--tls CERT KEY]   (--tls: HTTPS with that certificate)
"""

import argparse
import http.server
import time

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--delay", type=float, default=0.0)
p.add_argument("--body", default="ok")
p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
a = p.parse_args()


class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200, "ok") if self.path == "/" else self._answer(404, "no")

    def do_POST(self) -> None:
        self._answer(200, a.body) if self.path == "/models" else self._answer(404, "no")

    def log_message(self, *args) -> None:
        pass


time.sleep(a.delay)
server = http.server.HTTPServer(("127.0.0.1", a.port), Handler)
if a.tls:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*a.tls)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("listening", flush=True)
server.serve_forever()

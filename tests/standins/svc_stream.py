"""Stand-in HTTP service whose answer never ends: GET on 127.0.0.1:PORT answers 200, then PREFIX, then an
endless body (1 KiB pieces, as fast as the client takes them). Each connection, once the client has gone,
prints "sent N bytes" (body bytes) on stdout. Prints "listening" once it accepts connections.

usage: svc_stream.py PORT [--prefix TEXT]
"""

import argparse
import socket
import socketserver

p = argparse.ArgumentParser()
p.add_argument("port", type=int)
p.add_argument("--prefix", default="")
a = p.parse_args()
PIECE = b"x" * 1023 + b"\n"


class Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # the request line and headers
        sent = 0
        try:
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + a.prefix.encode())
            while True:
                self.request.sendall(PIECE)
                sent += len(PIECE)
        except OSError:
            pass
        print(f"sent {sent} bytes", flush=True)


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", a.port), Handler)
print("listening", flush=True)
server.serve_forever()

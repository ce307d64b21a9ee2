"""Free TCP ports for tests that hand a port to something that binds it *later* (a service, a server started
and stopped again on the same port).

``bind(("127.0.0.1", 0))`` and close is not enough for that: the kernel gives such ports from the ephemeral
range (``/proc/sys/net/ipv4/ip_local_port_range``), the same range it takes the local port of every outgoing
connection from. In a suite where many daemons probe many servers at once, one of those connections can take
the port in the gap before the test binds it (CI saw ``Address already in use`` so). A port *below* that range
is never given to a connection nor to another ``bind(0)``, so only an explicit bind can take it: this module
hands out such ports, each at most once per process, after checking that a bind succeeds now."""

from __future__ import annotations

import random
import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()
_pick = random.SystemRandom()   # never the global generator: Hypothesis seeds that one, the same way every run
_LOWEST = 20000   # well above the well-known and registered ports services of the integration suite use


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768   # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now, outside the ephemeral range where the system allows it, and never
    one this process handed out before (tests that run side by side each pick ports that a service binds later)."""
    with _lock:
        high = _ephemeral_low()
        if high - _LOWEST >= 1000:
            for _ in range(1000):
                port = _pick.randrange(_LOWEST, high)
                if port not in _given and _bindable(port):
                    _given.add(port)
                    return port
        while True:   # a system whose ephemeral range starts low: the kernel's pick, never one given twice
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port

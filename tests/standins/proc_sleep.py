"""Stand-in: a service that idles until signalled (default signal actions apply)."""

import signal

while True:
    signal.pause()

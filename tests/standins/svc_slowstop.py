"""Stand-in service that takes --stop-delay seconds to stop after SIGTERM (then exits 0), and
prints --say TEXT once started.

usage: svc_slowstop.py [--stop-delay S] [--say TEXT] [--ignore-term]
"""

import argparse
import os
import signal
import time

p = argparse.ArgumentParser()
p.add_argument("--stop-delay", type=float, default=0.0)
p.add_argument("--say", default="started")
p.add_argument("--ignore-term", action="store_true")
a = p.parse_args()


def on_term(signum, frame) -> None:
    if a.ignore_term:
        return
    time.sleep(a.stop_delay)
    os._exit(0)


signal.signal(signal.SIGTERM, on_term)
print(a.say, flush=True)
while True:
    time.sleep(3600)

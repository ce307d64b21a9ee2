"""``qasup up``, stage by stage, with ``time.time()`` after each (run by :mod:`benchkit.startup`).

    PYTHON startup_driver.py --config FILE up

Does what ``python -m supervisor up`` does (supervisor/__main__.py, cli/main.py, cli/config_verbs.cmd_up), in
the same order, through the same functions, and writes the marks to stderr as one line
``QASUP-STAGES [[stage, time], ...]`` before the daemon runs; then runs the daemon until SIGTERM.
"""

import sys
import time

T = [("interpreter start to the first line of the program", time.time())]


def mark(stage: str) -> None:
    T.append((stage, time.time()))


import _signal  # type: ignore[import-not-found]  # noqa: E402  # as supervisor/__main__.py does for up

_signal.pthread_sigmask(_signal.SIG_BLOCK, (15, 2, 1))

from supervisor.cli import main as cli  # noqa: E402

mark("import supervisor.cli.main (argparse, protocol)")
argv = sys.argv[1:]
parser = cli.build_parser(only=cli._fast_verb(argv))
args = parser.parse_args(argv)
cli._release_unless_up(True, args.verb)
mark("build the parser, parse the arguments")
from supervisor import lazyssl  # noqa: E402

lazyssl.install()
import json  # noqa: E402
import os  # noqa: E402

from supervisor.cli import config_verbs  # noqa: E402
from supervisor.errors import Problems  # noqa: E402
from supervisor.plan import pipeline  # noqa: E402

mark("import config_verbs and the plan pipeline (config/, plan/)")
request = config_verbs.plan_request(args)
environ = dict(os.environ)
probs = Problems()
config = pipeline.load_stage(request, probs)
mark("plan: load_stage (read and check qasup.toml and the units)")
inventory = pipeline.inventory_stage(request, config, environ)
mark("plan: inventory_stage (GPU inventory)")
plan = pipeline.plan_stage(request, config, inventory, probs, environ)
mark("plan: plan_stage (resolve, graph, plan)")
from supervisor import daemon  # noqa: E402

mark("import supervisor.daemon (asyncio, anyio, engine/, control/, proc/, logs/)")
options = daemon.DaemonOptions.from_values(socket=getattr(args, "socket", None), planner=None)
sys.stderr.write("QASUP-STAGES " + json.dumps(T) + "\n")
sys.stderr.flush()
sys.exit(daemon.run_daemon(plan, options))

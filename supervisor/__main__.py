"""``python -m supervisor``: the ``qasup`` command line (:mod:`supervisor.cli.main`).

For ``up``, SIGTERM, SIGINT and SIGHUP are blocked before anything else is imported: as PID 1 a signal that has
no handler yet is dropped by the kernel (a ``docker stop`` right after start would end in SIGKILL), and SIGINT
would be a KeyboardInterrupt in the middle of an import. Blocked, they stay pending; the daemon unblocks them
once its handlers are installed (see ``supervisor.proc.kernel.hold_signals``), and every other verb at once.
"""

import sys

if "up" in sys.argv[1:]:
    import _signal  # type: ignore[import-not-found]  # the C module: ``signal`` would import enum first

    _signal.pthread_sigmask(_signal.SIG_BLOCK, (15, 2, 1))   # supervisor.proc.kernel.HELD_SIGNALS

from supervisor.cli.main import main  # noqa: E402

raise SystemExit(main())

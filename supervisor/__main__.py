"""``python -m supervisor``: the ``qasup`` command line (:mod:`supervisor.cli.main`)."""

from supervisor.cli.main import main

raise SystemExit(main())

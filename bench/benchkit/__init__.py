"""The benchmark harness behind ``bench/run.py``: qasup against supervisord on the same stand-in programs.

Modules: :mod:`procs` (watching output, event logs and /proc; cleaning up), :mod:`daemons` (writing configs
for, starting and stopping both supervisors), :mod:`scenarios` (the measurements), :mod:`report` (the
markdown page) and :mod:`standin` (the stand-in programs, standard library only).
"""

"""qasup's PID-1 duties: spawning, reaping and stopping service process trees.

Exactly one component reaps children in a qasup process, the :class:`~supervisor.proc.reaper.Reaper`
(never asyncio's child watcher, ``Popen.wait`` or ``subprocess.run``). Modules, lowest first:

- ``kernel``: prctl (subreaper, PDEATHSIG), wait statuses as exit codes, :class:`SpawnError`.
- ``proctable``: reading /proc, the ``QASUP_INSTANCE`` tag, a service's tree within one shared scan.
- ``spawn``: how a child is started (checked arguments, fork and exec in a new session, disowned).
- ``reaper``: :class:`Reaper` (waitpid(-1) on SIGCHLD, spawn, spawn_async) and :class:`Child`.
- ``tree``: which processes belong to a service (``members``, ``anything_left``).
- ``stop``: ``terminate``, the tree-wide stop with SIGKILL after the timeout.
- ``run``: ``run_to_completion`` for ``[prepare]`` commands and exec probes.
- ``contenthash``: content hashes for ``[prepare] when_changed``.

This file imports nothing, so that importing one module of the package costs only that module.
"""

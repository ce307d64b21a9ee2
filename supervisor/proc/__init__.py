"""qasup's PID-1 duties: spawning, reaping and stopping service process trees.

Exactly one component reaps children in a qasup process, the :class:`~supervisor.proc.reaper.Reaper`
(never asyncio's child watcher, ``Popen.wait`` or ``subprocess.run``). Modules, lowest first:

- ``kernel``: prctl (subreaper, PDEATHSIG), wait statuses as exit codes, :class:`SpawnError`.
- ``proctable``: reading /proc, the ``QASUP_INSTANCE`` tag, a service's tree within one shared scan.
- ``cgroupfs``, ``cgroup``: where qasup can make cgroups; the daemon's tree and one cgroup per spawn.
- ``ledger``: what the guardian must kill if qasup dies (pids with start times, groups, sessions).
- ``spawn``: how a child is started (checked arguments, the unit's user, fork and exec in a new session, disowned).
- ``reaper``: :class:`Reaper` (waitpid(-1) on SIGCHLD, spawn, spawn_async) and :class:`Child`.
- ``tree``: which processes belong to a service (``members``, ``anything_left``).
- ``guardian`` (+ ``guardkill``, the program it runs): kills the stack if qasup dies.
- ``sweep``: the PID-1 sweep at the end of a shutdown; ``tracking``, the daemon's process side in one block.
- ``stop``: ``terminate``, the tree-wide stop with SIGKILL after the timeout.
- ``run``: ``run_to_completion`` for ``[prepare]`` commands and exec probes.
- ``contenthash``: content hashes for ``[prepare] when_changed``.

This file imports nothing, so that importing one module of the package costs only that module.
"""

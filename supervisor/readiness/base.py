"""What every readiness probe is: :class:`Probe`, and :class:`Polled` for the ones tried again and again.

Polled probes start fast (50 ms) and back off by half again each try up to the unit's ``interval``, so a service
that comes up in 300 ms is seen in about 300 ms, and one that loads a model for minutes is not hammered.
"""

from __future__ import annotations

import anyio

FIRST_PAUSE = 0.05
GROWTH = 1.5


class Probe:
    """One check; ``await probe.wait()`` returns once it passed. ``last_error`` says why it has not."""

    name = "probe"
    last_error: str | None = None
    passed = False

    async def wait(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the probe holds (connections); called once the wait is over, passed or not."""


class Polled(Probe):
    """A probe that passes when one :meth:`once` returns True; tries are spaced as the module says."""

    def __init__(self, interval: float) -> None:
        self.interval = max(interval, FIRST_PAUSE)

    async def once(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    async def wait(self) -> None:
        pause = FIRST_PAUSE
        while True:
            try:
                if await self.once():
                    return
            except Exception as e:  # a probe must never kill the engine; report and try again
                self.last_error = f"{type(e).__name__}: {e}"
            await anyio.sleep(pause)
            pause = min(pause * GROWTH, self.interval)

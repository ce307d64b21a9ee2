"""What the control API turned away for want of room, counted by reason for ``/metrics``
(``qasup_api_refused_total{reason}``): one :class:`Refusals` per daemon, shared by its servers."""

from __future__ import annotations

__all__ = ["Refusals"]


class Refusals:
    """What the API turned away for want of room since the daemon started, by reason (``/metrics``:
    ``qasup_api_refused_total``). One per daemon, shared by its servers; only the event loop writes it."""

    REASONS = ("connection_limit", "stream_limit", "idle_shed", "out_of_fds_reserve", "out_of_fds_request")
    """connection_limit: a connection over ``max_connections`` (503); stream_limit: a stream over ``max_streams``
    or the streams' buffer cap (503); idle_shed: an idle connection closed to accept a new one when out of
    descriptors; out_of_fds_reserve: a connection answered 503 on the reserve descriptor; out_of_fds_request: a
    request answered 503 because its handler found no descriptor."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = dict.fromkeys(self.REASONS, 0)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)

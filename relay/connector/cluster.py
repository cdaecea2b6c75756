"""How one connector process works beside others: the ``Coordinator`` seam and its one-process
form, ``SingleInstance`` (SQLite: exactly the behaviour of a lone connector).

The connector calls its coordinator at three points: ``start()`` once restored (a lone
connector starts its platform send workers), ``socket_up``/``socket_down`` around a handshaken
socket, and ``poker(gateway_id)`` for every poke it wants. On PostgreSQL
(``relay.connector.pg.cluster.PgCluster``) those become a generation claim, a release, and
events to whichever instance leads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from relay.connector.wake import WakePoker

if TYPE_CHECKING:
    from relay.connector.platform_outbox import PlatformOutbox
    from relay.connector.surface import Session


class Poker(Protocol):
    """What the connector asks of a gateway's pokes (``WakePoker`` is the real one)."""

    def request(self, *, immediate: bool = False) -> None: ...

    def schedule_wake_at(self, wake_at: float | None) -> None: ...

    def cancel(self) -> None: ...


class Coordinator(Protocol):
    """The connector's view of the other instances on its database (none for SQLite)."""

    def start(self) -> None:
        """The connector restored its state: start background work (send workers, listeners)."""
        ...

    async def socket_up(self, s: Session) -> None:
        """``s`` completed its handshake (and is in ``sessions``): newest handshake wins."""
        ...

    def socket_down(self, s: Session) -> None:
        """``s`` closed (handshaken or not): forget it."""
        ...

    def poker(self, gateway_id: str) -> Poker:
        """The pokes of ``gateway_id`` as this instance may ask for them."""
        ...


class LocalHost(Protocol):
    """The connector members ``SingleInstance`` uses."""

    @property
    def platform_outbox(self) -> PlatformOutbox: ...

    def local_poker(self, gateway_id: str) -> WakePoker: ...


class SingleInstance:
    """One connector process owns everything: pokes and platform sends happen here."""

    def __init__(self, host: LocalHost) -> None:
        self.host = host

    def start(self) -> None:
        """Start the platform send workers (they first send what is still queued)."""
        self.host.platform_outbox.start()

    async def socket_up(self, s: Session) -> None:
        """Nothing to tell: ``sessions`` is the whole truth (the handler closes an older socket)."""

    def socket_down(self, s: Session) -> None:
        """Nothing to release."""

    def poker(self, gateway_id: str) -> WakePoker:
        """This process's own ``WakePoker`` of the gateway."""
        return self.host.local_poker(gateway_id)


def coordinator_for(host: Any) -> Coordinator:
    """``PgCluster`` for a store shared by several instances (``multi_instance``), else
    ``SingleInstance``. ``host`` is the ``Connector``."""
    if getattr(host.store, "multi_instance", False):
        from relay.connector.pg.cluster import PgCluster  # asyncpg only when PostgreSQL is used

        return PgCluster(host, host.store)
    return SingleInstance(host)

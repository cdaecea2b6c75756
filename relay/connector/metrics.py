"""The connector's Prometheus metrics, served on an internal port of its own
(``hermes-relay serve --metrics-port``, ``RELAY_METRICS_PORT``; off by default): what an operator
of a connector shared by many gateways watches. Counters are bumped where the work happens;
gauges and the poke and 4409 counts are read from the connector when Prometheus scrapes, and
the unacked entries of every known gateway are counted in the store then (one query per
gateway: a scrape of a connector fronting thousands of gateways costs thousands of reads).

Names: ``hermes_relay_ingress_total{platform,delivered}`` (``live`` or ``buffered``: stored
messages only), ``hermes_relay_frames_sent_total`` (buffer entries sent on gateway sockets,
replays included), ``hermes_relay_acked_total`` (entry ids acked by gateways, as received: a
repeated ack counts again), ``hermes_relay_sockets_live``, ``hermes_relay_gateways_flipped``,
``hermes_relay_unacked_entries{gateway}`` (the gateways this instance knows, now),
``hermes_relay_store_up`` (0 when that count failed: the store is unreachable),
``hermes_relay_pokes_total{outcome}`` (``sent``: a 2xx; ``failed``), and
``hermes_relay_replacements_total{gateway}`` (4409 replacements and refusals, PROTOCOL.md 7.5).
On PostgreSQL each instance counts its own work; the unacked gauge is the shared store's (do
not sum it across instances).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from relay.connector.server import Connector

log = logging.getLogger("relay.connector")


class ConnectorMetrics:
    """The counters ``connector`` bumps (``ingress``, ``frames_sent``, ``acked``) on a registry
    of its own (several connectors can live in one process: ``hermes-sidecar dev``, the tests),
    and what a scrape reads from it; ``unacked`` (gateway id -> entries, or None: the store
    could not say) is refreshed by ``metrics_app`` before each scrape."""

    def __init__(self, connector: Connector) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        r.register(_Live(connector))
        self.ingress = Counter(
            "hermes_relay_ingress_total",
            "Messages stored by ingress, the Telegram webhook or poller, by how they went out",
            ["platform", "delivered"],
            registry=r,
        )
        self.frames_sent = Counter(
            "hermes_relay_frames_sent_total", "Buffer entries sent on gateway sockets", registry=r
        )
        self.acked = Counter(
            "hermes_relay_acked_total", "Buffer entry ids acked by gateways, as received", registry=r
        )
        self.unacked: dict[str, int] | None = {}


class _Live(Collector):
    """What a scrape reads from the connector itself."""

    def __init__(self, connector: Connector) -> None:
        self.c = connector

    def collect(self) -> Iterator[Metric]:
        c = self.c
        yield GaugeMetricFamily(
            "hermes_relay_sockets_live",
            "Gateway sockets live on this instance",
            value=sum(1 for s in c.sessions.values() if s.live),
        )
        yield GaugeMetricFamily(
            "hermes_relay_gateways_flipped",
            "Gateways flipped to buffered-only (asleep)",
            value=sum(1 for flipped in c.flipped.values() if flipped),
        )
        pokes = CounterMetricFamily("hermes_relay_pokes", "Wake URL pokes by outcome", labels=["outcome"])
        pokes.add_metric(["sent"], sum(p.pokes_sent for p in c.pokers.values()))
        pokes.add_metric(["failed"], sum(p.pokes_failed for p in c.pokers.values()))
        yield pokes
        unacked = c.metrics.unacked
        yield GaugeMetricFamily(
            "hermes_relay_store_up",
            "1 when the store answered this scrape's counts",
            value=0.0 if unacked is None else 1.0,
        )
        entries = GaugeMetricFamily(
            "hermes_relay_unacked_entries", "Buffered entries not acked yet, per gateway", labels=["gateway"]
        )
        for gid, count in sorted((unacked or {}).items()):
            entries.add_metric([gid], count)
        yield entries
        fights = CounterMetricFamily(
            "hermes_relay_replacements",
            "Sockets replaced or refused with 4409 because another one holds the gateway id",
            labels=["gateway"],
        )
        for gid, count in sorted(c.replacements_total.items()):
            fights.add_metric([gid], count)
        yield fights


def metrics_app(connector: Connector) -> web.Application:
    """The internal port's app: ``GET /metrics`` (Prometheus text, no authentication: bind it
    where only the scraper reaches it)."""

    async def scrape(_request: web.Request) -> web.Response:
        known = sorted(set(connector.routes.values()) | set(connector.sessions))
        try:
            connector.metrics.unacked = {gid: await connector.store.unacked_count(gid) for gid in known}
        except Exception as exc:  # the counters still answer; store_up says what is missing
            if connector.metrics.unacked is not None:
                log.warning("metrics: the store did not answer the unacked counts: %s", exc)
            connector.metrics.unacked = None
        body = generate_latest(connector.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    return app

"""Several connector instances on one PostgreSQL database (``relay/connector/pg/cluster.py``):
two in-process connectors on one schema, real sockets on 127.0.0.1, a fake clock for pokes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from common.clock import FakeClock
from relay.connector.pg.cluster import PgCluster
from relay.connector.pg.store import PgStore
from relay.connector.server import Connector
from relay.protocol import frames as F
from relay.protocol.token import mint_token
from tests.relay.helpers import Changes, FakeGatewayHttp, RawGateway, post, start_connector
from tests.relay.telegram_fakes import FakeBotApi, update
from tests.relay.test_telegram import BOT, GW, GW_SECRET, HOOK_SECRET, OK_HEADERS, TOKEN, outbound

MSG = {"chat_id": 42, "user_id": "u1", "text": "hello", "message_id": 1}


class Instance:
    """One connector process's worth: a ``Connector`` on the shared schema and its server; every
    event it hears and every listener (re)connect notifies ``changes``."""

    def __init__(self, connector: Connector, server: TestServer) -> None:
        self.connector = connector
        self.server = server
        self.changes = Changes()
        cluster = self.cluster
        heard, caught_up = cluster.listener.on_event, cluster.listener.on_connect

        def on_event(ev: dict[str, Any]) -> None:
            heard(ev)
            self.changes.notify()

        async def on_connect() -> None:
            await caught_up()
            self.changes.notify()

        cluster.listener.on_event, cluster.listener.on_connect = on_event, on_connect

    @property
    def cluster(self) -> PgCluster:
        assert isinstance(self.connector.cluster, PgCluster)
        return self.connector.cluster

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/relay"

    async def close(self) -> None:
        await self.server.close()
        await self.connector.close()


class Cluster:
    def __init__(self, url: str) -> None:
        self.url = url
        self.clock = FakeClock(wall=time.time())
        self.gw_http = FakeGatewayHttp()
        self.instances: list[Instance] = []
        self.clients: list[RawGateway] = []

    async def start(self, n: int = 2, **kwargs: Any) -> list[Instance]:
        await self.gw_http.start()
        for _ in range(n):
            connector, server = await start_connector(self.url, clock=self.clock, **kwargs)
            self.instances.append(Instance(connector, server))
        for inst in self.instances:  # both listening, one of them leading
            await inst.changes.until(lambda i=inst: i.cluster.listener.connected)  # type: ignore[misc]
        await self.until(lambda: sum(i.cluster.leader for i in self.instances) == 1)
        return self.instances

    async def until(self, pred: Any, timeout: float = 10.0) -> None:
        """Wait for ``pred()`` as events arrive on any instance, re-checking every 50 ms for the
        state that changes without an event (the leader lock, a listener losing its connection):
        a bound on real I/O, never a wait for time to pass (the clock is fake)."""

        async def loop() -> None:
            while not pred():
                waits = [asyncio.ensure_future(i.changes.until(lambda: True)) for i in self.instances]
                await asyncio.wait(waits, timeout=0.05, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()

        await asyncio.wait_for(loop(), timeout)

    def raw(self, inst: Instance, headers: dict[str, str] | None = None) -> RawGateway:
        g = RawGateway(inst.ws_url, headers)
        self.clients.append(g)
        return g

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        for inst in self.instances:
            await inst.close()
        await self.gw_http.close()


@pytest.fixture
async def cluster(pg_url: str) -> AsyncIterator[Cluster]:
    c = Cluster(pg_url)
    yield c
    await c.close()


async def test_cluster_ingress_on_one_instance_is_delivered_live_on_the_other(cluster: Cluster) -> None:
    """A gateway's socket on B gets, live and in order, what is posted to A's ingress."""
    a, b = await cluster.start()
    gw = cluster.raw(b)
    await gw.connect(wake_url=cluster.gw_http.wake_url)
    await cluster.until(lambda: ("relay", "") in a.connector.routes)  # the hello's route reached A
    ids = []
    for i in range(3):
        status, body = await post(a.base + "/ingress/relay", {**MSG, "message_id": i, "text": f"m{i}"})
        assert status == 202
        ids.append(body["buffer_id"])
    got = [await gw.recv_type("inbound") for _ in ids]
    assert [f["bufferId"] for f in got] == ids
    assert [f["event"]["text"] for f in got] == ["m0", "m1", "m2"]
    assert cluster.gw_http.pokes == []  # live on B: nobody pokes


async def test_cluster_newest_handshake_wins_across_instances(cluster: Cluster) -> None:
    """A newer handshake on B closes the older socket on A with 4409; ingress then reaches B."""
    a, b = await cluster.start()
    old = cluster.raw(a)
    await old.connect()
    # the descriptor goes out before the handshake's generation commits: wait until B heard it
    await cluster.until(lambda: b.cluster.newest.get("dev") == 1)
    new = cluster.raw(b)
    await new.connect()
    assert old.ws is not None
    msg = await old.ws.receive(timeout=10)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 4409, "replaced")
    status, body = await post(a.base + "/ingress/relay", MSG)
    assert status == 202
    assert (await new.recv_type("inbound"))["bufferId"] == body["buffer_id"]


async def test_cluster_buffered_burst_on_both_ingresses_pokes_once(cluster: Cluster) -> None:
    """After a flip, messages posted to both instances are buffered and poke the gateway once."""
    a, b = await cluster.start()
    gw = cluster.raw(a)
    await gw.connect(wake_url=cluster.gw_http.wake_url)
    await gw.send(F.going_idle())
    await gw.recv_type("going_idle_ack")
    await gw.close()
    for i in range(6):
        inst = (a, b)[i % 2]
        status, body = await post(inst.base + "/ingress/relay", {**MSG, "message_id": i})
        assert status == 202
    await cluster.gw_http.changes.until(lambda: len(cluster.gw_http.pokes) == 1)
    await cluster.clock.advance(5)  # t=5 s: inside the 10 s window, no instance pokes again
    assert len(cluster.gw_http.pokes) == 1
    # The gateway wakes on B: all six are replayed there, in order.
    again = cluster.raw(b)
    await again.connect(wake_url=cluster.gw_http.wake_url)
    got = [await again.recv_type("inbound") for _ in range(6)]
    assert [f["event"]["message_id"] for f in got] == [str(i) for i in range(6)]


async def test_cluster_wake_at_is_poked_once_by_the_leader(cluster: Cluster) -> None:
    """A wakeAt given to the instance that does not lead is poked once, at that time."""
    a, b = await cluster.start()
    follower = a if b.cluster.leader else b
    gw = cluster.raw(follower)
    await gw.connect(wake_url=cluster.gw_http.wake_url)
    await gw.send(F.going_idle(cluster.clock.wall() + 60))
    await gw.recv_type("going_idle_ack")
    await cluster.until(lambda: any(i.cluster._scheduled for i in (a, b)))
    await cluster.clock.advance(59)  # t=59 s: not yet
    assert cluster.gw_http.pokes == []
    await cluster.clock.advance(1)  # t=60 s: wakeAt
    await cluster.gw_http.changes.until(lambda: len(cluster.gw_http.pokes) == 1)
    await cluster.clock.advance(30)
    assert len(cluster.gw_http.pokes) == 1


async def test_cluster_lost_event_is_caught_up_after_the_listener_reconnects(cluster: Cluster) -> None:
    """B's listener loses its connection; an entry appended on A meanwhile still reaches B's socket."""
    a, b = await cluster.start()
    gw = cluster.raw(b)
    await gw.connect()
    await cluster.until(lambda: ("relay", "") in a.connector.routes)
    con = await asyncpg.connect(cluster.url)
    try:
        killed = await con.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
            f'LISTEN "{b.cluster.store.channel}"',
        )
    finally:
        await con.close()
    assert killed == 2  # both instances' listeners
    await cluster.until(lambda: not b.cluster.listener.connected)
    status, body = await post(a.base + "/ingress/relay", MSG)
    assert status == 202
    await cluster.clock.advance(1)  # the listeners' first backoff: reconnect, then catch up
    await cluster.until(lambda: b.cluster.listener.connects == 2)
    assert (await gw.recv_type("inbound"))["bufferId"] == body["buffer_id"]


async def test_cluster_telegram_update_posted_to_both_instances_is_stored_once(pg_url: str) -> None:
    """The same update_id appended by two instances at once: one buffer entry, marked seen."""
    a, b = await PgStore.open(pg_url), await PgStore.open(pg_url)
    try:
        common = {"gateway_id": "gw1", "platform": "telegram", "bot_id": BOT, "chat_id": "42", "now": 1.0}
        await asyncio.gather(
            a.append(buffer_id="x", frame="fx", telegram_update=(BOT, 7), **common),
            b.append(buffer_id="y", frame="fy", telegram_update=(BOT, 7), **common),
        )
        assert len(await a.buffer_rows()) == 1
        assert await b.update_seen(BOT, 7)
    finally:
        await a.close()
        await b.close()


@pytest.fixture
async def bot_api() -> AsyncIterator[FakeBotApi]:
    api = await FakeBotApi().start()
    yield api
    await api.close()


async def test_cluster_platform_send_is_made_once_and_answered_on_the_socket(
    cluster: Cluster, bot_api: FakeBotApi
) -> None:
    """A Telegram send from a gateway on the instance that does not lead is sent once (by the
    leader), answered on the gateway's socket, and a keyed resend is a duplicate, not a call."""
    a, b = await cluster.start(
        secrets={GW: GW_SECRET},
        telegram={GW: TOKEN},
        telegram_webhook_secret=HOOK_SECRET,
        telegram_api_base=bot_api.base,
    )
    follower = a if b.cluster.leader else b
    gw = cluster.raw(follower, {"Authorization": "Bearer " + mint_token(GW, GW_SECRET, cluster.clock.wall())})
    await gw.connect(platform="telegram", bot_id=BOT)
    action = {"op": "send", "chat_id": "42", "content": "once"}
    await gw.send(outbound("r1", action, key="k1"))
    result = await gw.recv_type("outbound_result")
    assert result["requestId"] == "r1"
    assert result["result"]["success"] is True
    await gw.send(outbound("r2", action, key="k1"))
    again = await gw.recv_type("outbound_result")
    assert again["requestId"] == "r2"
    assert again["result"]["duplicate"] is True
    assert [j["text"] for j in bot_api.of("sendMessage")] == ["once"]


async def test_cluster_webhook_repeat_on_the_other_instance_is_ignored(cluster: Cluster) -> None:
    """Telegram retrying an update to the other instance: 200 both times, one inbound delivered."""
    a, b = await cluster.start(
        secrets={GW: GW_SECRET},
        telegram={GW: TOKEN},
        telegram_webhook_secret=HOOK_SECRET,
        telegram_api_base="http://127.0.0.1:9",
    )
    gw = cluster.raw(a, {"Authorization": "Bearer " + mint_token(GW, GW_SECRET, cluster.clock.wall())})
    await gw.connect(platform="telegram", bot_id=BOT)
    async with aiohttp.ClientSession() as http:
        for inst in (a, b):
            async with http.post(f"{inst.base}/telegram/{GW}", json=update(5), headers=OK_HEADERS) as r:
                assert r.status == 200
    first = await gw.recv_type("inbound")
    assert first["event"]["text"] == "hello"
    store = a.connector.store
    assert len(await store.buffer_rows()) == 1


async def test_cluster_leader_loss_hands_due_pokes_to_the_other_instance(cluster: Cluster) -> None:
    """The leader's lock connection dies (as when its process is killed): the other instance
    takes the lock at once and pokes the flipped gateway that still has an unacked entry."""
    a, b = await cluster.start()
    leader, follower = (a, b) if a.cluster.leader else (b, a)
    gw = cluster.raw(follower)
    await gw.connect(wake_url=cluster.gw_http.wake_url)
    await gw.send(F.going_idle())
    await gw.recv_type("going_idle_ack")
    await gw.close()
    status, _ = await post(follower.base + "/ingress/relay", MSG)
    assert status == 202
    await cluster.gw_http.changes.until(lambda: len(cluster.gw_http.pokes) == 1)
    con = await asyncpg.connect(cluster.url)
    try:
        killed = await con.fetchval(  # this schema's leader lock only (its key is the lock's)
            "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND ((l.classid::bigint << 32) | l.objid::bigint) = $1::bigint",
            leader.cluster.leadership.key,
        )
    finally:
        await con.close()
    assert killed == 1  # the holder's; the other instance's is still waiting in the lock
    await cluster.until(lambda: follower.cluster.leader and not leader.cluster.leader)
    await cluster.gw_http.changes.until(lambda: len(cluster.gw_http.pokes) == 2)

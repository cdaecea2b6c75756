"""The turn of one admitted inbound message, as the durable state machine of
``gateway/core/turn.py``: the model is asked, the whole answer is committed (split into the
chunks to send) **before** the first send, then each chunk is sent with the idempotency key
``inbox:<id>:<chunk>`` and counted once confirmed. A restart resumes the turn at its last
durable step, so a confirmed chunk is never sent again and an answered turn never calls the
model again. Items of one chat run in arrival order (a FIFO lock per chat), whatever the caps.

``relay_send`` is the sidecar's send path: while the relay is down the turn waits for the
reconnect (it stays running, so the watcher will not flip under it). An ambiguous result
(timeout, lost socket) is resent with the same key only when the connector advertises
``supports_idempotent_send`` (it answers a repeat with the stored result), for up to
``agent.delivery_give_up_hours``; without it, it is never resent (an answer twice is worse than
one lost). A declined send (PROTOCOL 7.4) is definite: never resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from common.clock import Clock, wait_with_timeout
from gateway.agent.provider import split_message
from gateway.agent.spend import SpendLedger, TurnReport
from gateway.config import Config
from gateway.conversation.chat import Conversation
from gateway.core.turn import TERMINAL, TurnEvent, TurnState, chunk_key, give_up_due
from gateway.inbox.store import InboxItem, InboxStore
from gateway.kanban.board import Outcome
from gateway.kanban.sources import inbox_ref
from gateway.runtime.answer import Answer, Answerer
from relay.client.transport import RelayTransport
from relay.protocol import frames as F

log = logging.getLogger("gateway.inbox")

SOCKET_GONE_WAIT_S = 5.0
"""Seconds a send that found a closing socket waits for the transport to notice, per try."""
HANDLED = frozenset({"succeeded", "reset", "unsupported"})
"""Turn outcomes that are the agent doing its job (the task is ``done``); others fail it."""


class _ChatLock:
    """A chat's turn lock and how many turns hold or wait for it."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class Sent(enum.Enum):
    """How one chunk's send ended: ``CONFIRMED``; ``FAILED`` (definite, or given up);
    ``INTERRUPTED`` (shutting down before it was confirmed: the next start sends it)."""

    CONFIRMED = "confirmed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


Send = Callable[[InboxItem, str, str, float], Awaitable[tuple[Sent, str | None]]]
"""``send(item, chunk, idempotency key, answered_at) -> (how it ended, error)``;
``answered_at`` (Unix seconds) bounds the resends."""

ChunkLimit = Callable[[], int]
"""The connector's ``max_message_length`` now (characters)."""


class InboxWorker:
    """Runs inbound turns. ``on_report(TurnReport)`` counts finished turns; ``on_model_retry()``
    counts a model call repeated because a restart found it unfinished (the sidecar's metrics).
    ``conversation`` keeps sessions and history; ``ledger`` the spend cap and substitutions."""

    def __init__(
        self,
        *,
        inbox: InboxStore,
        config: Config,
        http: aiohttp.ClientSession,
        env: Mapping[str, str],
        clock: Clock,
        send: Send,
        chunk_limit: ChunkLimit = lambda: F.DEFAULT_MAX_MESSAGE_LENGTH,
        on_report: Callable[[TurnReport], None] | None = None,
        on_model_retry: Callable[[], None] | None = None,
        conversation: Conversation | None = None,
        ledger: SpendLedger | None = None,
    ) -> None:
        self.inbox = inbox
        self.config = config
        self.http = http
        self.env = env
        self.clock = clock
        self.send = send
        self.chunk_limit = chunk_limit
        self.on_report = on_report
        self.on_model_retry = on_model_retry
        self.answerer = Answerer(
            config=config, http=http, env=env, clock=clock, ledger=ledger, conversation=conversation
        )
        self._locks: dict[str, _ChatLock] = {}

    @contextlib.asynccontextmanager
    async def _lock(self, item: InboxItem) -> AsyncIterator[None]:
        """One turn at a time per chat, in arrival order (asyncio.Lock is FIFO); the entry is
        dropped when nobody holds or waits for it, so the table never outgrows the live chats."""
        key = f"{item.platform}\x00{item.chat_id}"
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _ChatLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]

    async def turn(self, item: InboxItem, profile: str | None) -> Outcome:
        """Run or resume ``item``'s turn on ``profile`` (None: the default); the task's outcome.

        A done turn returns its outcome without running again. A config or provider error (any
        unusable answer) becomes the apology as the answer, and the task ``failed``.
        """
        async with self._lock(item):
            row = await self.inbox.turn(item.id)
            if row is None:
                return Outcome("failed", error=f"inbox item {item.id} not found")
            if row.state in TERMINAL:
                log.info("inbox %d: turn already %s; not run again", item.id, row.state.value)
                return _outcome(row.state is TurnState.DELIVERED and row.outcome in HANDLED, row.error)
            state, chunks, outcome, error = row.state, row.chunks, row.outcome, row.error
            answered_at = row.answered_at
            answer: Answer | None = None
            if state is not TurnState.ANSWERED:
                answer = await self.answerer.without_model(item)
                if answer is None:
                    if state is TurnState.ANSWERING and self.on_model_retry is not None:
                        self.on_model_retry()  # a restart found the model call unfinished
                    await self.inbox.start_answer(item.id, state, self.clock.wall())
                    state = TurnState.ANSWERING
                    answer = await self.answerer.ask(item, profile)
                outcome, error = answer.outcome, answer.error
                chunks = split_message(answer.text, self.chunk_limit())
                answered_at = self.clock.wall()
                await self.inbox.commit_answer(
                    item.id, state, chunks, outcome, error, answered_at, answer.usage
                )
            assert chunks is not None
            assert answered_at is not None
            if outcome == "succeeded" and self.answerer.conversation is not None:
                # After the commit, and again on every resume: stored once whatever happens.
                await self.answerer.conversation.remember_answer(item.id, "".join(chunks), answered_at)
            report = TurnReport("inbound", profile or "default", "", *_spend_of(answer))
            return await self._deliver(
                item,
                chunks,
                row.chunks_sent if row.chunks else 0,
                outcome or "succeeded",
                error,
                answered_at,
                report,
            )

    async def refuse(self, item: InboxItem, error: str) -> None:
        """A message the board blocked (its profile is unknown): tell the user why, once (no
        model call), and close the inbox row as failed so a restart does not pick it up."""
        async with self._lock(item):
            row = await self.inbox.turn(item.id)
            if row is None or row.state is not TurnState.RECEIVED:
                return  # refused already (or answered): never twice
            chunks = split_message(f"This agent cannot answer yet: {error}.", self.chunk_limit())
            now = self.clock.wall()
            await self.inbox.commit_answer(item.id, TurnState.RECEIVED, chunks, "blocked", error, now)
            report = TurnReport("inbound", item.profile or "default", "")
            await self._deliver(item, chunks, 0, "blocked", error, now, report)

    async def _deliver(
        self,
        item: InboxItem,
        chunks: list[str],
        sent: int,
        outcome: str,
        error: str | None,
        answered_at: float,
        report: TurnReport,
    ) -> Outcome:
        """Send chunks ``sent..`` (each confirmed before the next), then close the turn;
        ``report`` (its outcome filled in here) goes to ``on_report``."""
        ref = inbox_ref(item.id)
        send_error: str | None = None
        result = Sent.CONFIRMED
        for index in range(sent, len(chunks)):
            result, send_error = await self.send(item, chunks[index], chunk_key(ref, index), answered_at)
            if result is not Sent.CONFIRMED:
                break
            sent = index + 1
            if sent < len(chunks):
                await self.inbox.chunk_sent(item.id, sent)
        if result is Sent.INTERRUPTED:
            log.info(
                "inbox %d: %d of %d chunk(s) confirmed; the rest goes out after the restart (%s)",
                item.id,
                sent,
                len(chunks),
                send_error,
            )
            return Outcome("interrupted", error=send_error)
        delivered = result is Sent.CONFIRMED
        ok = delivered and outcome in HANDLED
        await self.inbox.finish(
            item.id,
            TurnState.ANSWERED,
            TurnEvent.DELIVER if delivered else TurnEvent.GIVE_UP,
            sent=sent,
            ok=ok,
            error=None if delivered else send_error,
            now=self.clock.wall(),
        )
        label = outcome if delivered else "reply_failed"
        if self.on_report is not None:
            self.on_report(report._replace(outcome=label))
        reply = "sent" if delivered else f"not sent ({send_error})"
        if outcome == "blocked":
            log.warning("inbox %d (chat %s) blocked: %s; reply %s", item.id, item.chat_id, error, reply)
        else:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "turn %s for inbox %d (chat %s): %s; reply %s",
                outcome,
                item.id,
                item.chat_id,
                error or "answered",
                reply,
            )
        return _outcome(ok, error or send_error)


def _spend_of(answer: Answer | None) -> tuple[str | None, float | None, float | None, str | None]:
    """``(model, cost_usd, latency_s, substituted_by)`` of a fresh answer (all None on resume)."""
    if answer is None or answer.usage is None:
        return None, None, None, None
    return answer.usage.model, answer.usage.cost_usd, answer.latency_s, answer.substituted_by


def _outcome(ok: bool, error: str | None) -> Outcome:
    return Outcome("done" if ok else "failed", result="answered" if ok else None, error=None if ok else error)


def reply_action(item: InboxItem, chunk: str) -> dict[str, Any]:
    """The ``send`` action answering ``item`` (PROTOCOL 7.4): the chat, the thread when the
    message had one, and ``metadata`` (``user_id``, ``profile``, ``scope_id``) from its source."""
    src = item.source
    action: dict[str, Any] = {"op": "send", "chat_id": item.chat_id, "content": chunk}
    thread = src.get("thread_id")
    if isinstance(thread, str | int) and not isinstance(thread, bool) and str(thread):
        action["thread_id"] = str(thread)
    meta: dict[str, Any] = {}
    for key in ("user_id", "profile", "scope_id"):
        value = src.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            meta[key] = str(value)
    if meta:
        action["metadata"] = meta
    return action


def relay_send(
    transport: RelayTransport | None,
    accepting: Callable[[], bool],
    clock: Clock,
    give_up_hours: float = 24.0,
    bot_id_for: Callable[[str], str | None] = lambda _platform: None,
) -> Send:
    """The sidecar's ``send``: one chunk over the relay until confirmed (see the module doc).

    ``bot_id_for(platform)`` gives the ``botId`` to send from when the inbound named none.
    """

    async def send(item: InboxItem, chunk: str, key: str, answered_at: float) -> tuple[Sent, str | None]:
        t = transport
        if t is None:
            return Sent.FAILED, "no relay configured: reply not sent"
        action = reply_action(item, chunk)
        bot_id = item.bot_id or bot_id_for(item.platform)
        while True:
            if give_up_due(answered_at, clock.wall(), give_up_hours):
                log.warning("reply %s not confirmed within %g h; giving up", key, give_up_hours)
                return Sent.FAILED, f"not confirmed within {give_up_hours:g} h"
            idempotent = t.supports_idempotent_send
            result = await t.send_outbound(
                action, platform=item.platform, bot_id=bot_id, idempotency_key=key if idempotent else None
            )
            if result.get("success"):
                return Sent.CONFIRMED, None
            err = str(result.get("error"))
            if F.is_declined(result):
                log.warning("reply %s declined by the connector: %s", key, err)
                return Sent.FAILED, err
            if result.get("ambiguous"):
                if not idempotent:
                    log.warning(
                        "reply %s is ambiguous (%s); not resending (the connector has no idempotent sends)",
                        key,
                        err,
                    )
                    return Sent.FAILED, err
                log.warning("reply %s is ambiguous (%s); resending with the same key", key, err)
            elif err != F.NOT_CONNECTED["error"]:
                return Sent.FAILED, err
            if not accepting():
                return Sent.INTERRUPTED, "shutting down before the send was confirmed"
            if t.connected:
                # Nothing was sent but the socket still counts as up (it is closing): wait for
                # the transport to notice rather than retry in a loop that never yields.
                with contextlib.suppress(TimeoutError):
                    await wait_with_timeout(clock, t.wait_until(lambda: not t.connected), SOCKET_GONE_WAIT_S)
            if not t.connected:
                remaining = answered_at + give_up_hours * 3600.0 - clock.wall()
                try:
                    await wait_with_timeout(
                        clock,
                        t.wait_until(lambda: t.connected or not accepting()),
                        max(0.0, remaining) if math.isfinite(remaining) else 0.0,
                    )
                except TimeoutError:
                    continue  # the give-up check above ends it
                if not accepting():
                    return Sent.INTERRUPTED, "shutting down before the relay came back"

    return send

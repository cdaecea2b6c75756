"""What an inbound turn answers, before anything is committed or sent (SPEC 8.1, 8.2).

``Answerer.without_model(item)`` answers what needs no model call: ``/new`` and ``/reset``, a
message without usable text, a day over ``agent.max_daily_usd``. ``Answerer.ask(...)`` asks the
profile's model (with the chat's history, or in hermes mode) and never raises for a config or
provider problem: an unusable answer (an error, no text, garbage ``usage``) becomes the apology
with outcome ``failed``. It also records which model answered: a substitution opens an episode
with one WARNING alert (``/status.substitution_alerts``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from common.clock import Clock
from common.errors import ConfigError
from gateway.agent.provider import Completion, ProviderError, complete
from gateway.agent.redact import configured_secrets, redact
from gateway.agent.resolve import Resolved, resolve
from gateway.agent.spend import SpendLedger, is_substitution, utc_day
from gateway.config import Config
from gateway.conversation.chat import RESET_REPLY, TEXT_TYPES_REPLY, Conversation, is_reset, usable_text
from gateway.inbox.store import InboxItem, TurnUsage

log = logging.getLogger("gateway.inbox")

APOLOGY = "Sorry, the model provider failed for this message; please try again."


@dataclass(frozen=True)
class Answer:
    """A turn's answer: its ``text``, the ``outcome`` label (``succeeded``, ``failed``,
    ``config_error``, ``reset``, ``unsupported``, ``blocked_budget``), an ``error``, what the
    model call used (``usage``), how long it took (``latency_s``, seconds) and the model that
    answered instead of the one asked (``substituted_by``)."""

    text: str
    outcome: str
    error: str | None = None
    usage: TurnUsage | None = None
    latency_s: float | None = None
    substituted_by: str | None = None


class Answerer:
    """Builds inbound answers; ``conversation`` None makes every turn a single completion."""

    def __init__(
        self,
        *,
        config: Config,
        http: aiohttp.ClientSession,
        env: Mapping[str, str],
        clock: Clock,
        ledger: SpendLedger | None = None,
        conversation: Conversation | None = None,
    ) -> None:
        self.config = config
        self.http = http
        self.env = env
        self.clock = clock
        self.ledger = ledger
        self.conversation = conversation

    async def without_model(self, item: InboxItem) -> Answer | None:
        """The answer of a message that needs no model call, else None (ask the model)."""
        text = usable_text(item.event)
        if text is not None and is_reset(text):
            if self.conversation is not None:
                await self.conversation.reset(item, self.clock.wall())
            return Answer(RESET_REPLY, "reset")
        if text is None:
            log.info(
                "inbox %d: %s message without text; no model call",
                item.id,
                item.event.get("message_type") or "text",
            )
            return Answer(TEXT_TYPES_REPLY, "unsupported")
        cap = self.config.agent_max_daily_usd
        if cap is not None and self.ledger is not None:
            now = self.clock.wall()
            spent = await self.ledger.spent_today(now)
            if spent >= cap:
                if await self.ledger.budget_alert_once(now):
                    log.warning(
                        "agent.max_daily_usd reached: $%.4f spent on %s (UTC) of $%.4f; "
                        "inbound turns are refused until tomorrow (alert once a day)",
                        spent,
                        utc_day(now),
                        cap,
                    )
                return Answer(
                    f"This agent reached its daily spending limit (${cap:g}); it will "
                    "answer again tomorrow (UTC).",
                    "blocked_budget",
                    f"agent.max_daily_usd {cap:g} reached (${spent:.4f} spent today)",
                )
        return None

    async def ask(self, item: InboxItem, profile: str | None) -> Answer:
        """Ask the model to answer ``item`` (its usable text) on ``profile``; never raises for
        a config or provider problem."""
        text = usable_text(item.event) or ""
        try:
            target = resolve(self.config, profile)
        except ConfigError as exc:
            return Answer(f"This agent cannot answer yet: {exc}.", "config_error", str(exc))
        usage = TurnUsage(target.model, target.provider.name)
        started = self.clock.monotonic()
        try:
            completion = await self._complete(item, profile, text, target)
        except ProviderError as exc:
            # Every configured secret (read now: a reload may have changed them) stays out of
            # stored errors and logs.
            error = redact(str(exc), configured_secrets(self.config, self.env))
            log.warning("inbox %d: provider failed: %s", item.id, error)
            return Answer(APOLOGY, "failed", error, usage, self.clock.monotonic() - started)
        except Exception as exc:  # an answer we cannot use must never strand the turn
            log.warning("inbox %d: provider answer unusable: %s", item.id, type(exc).__name__)
            return Answer(APOLOGY, "failed", f"provider answer unusable: {type(exc).__name__}", usage)
        latency = completion.duration_s
        usage = TurnUsage(
            target.model,
            target.provider.name,
            completion.input_tokens,
            completion.output_tokens,
            completion.cost_usd,
            completion.answered_model,
        )
        substituted = await self._note_answer(item, usage)
        if completion.usage_problem is not None:
            # Spend we cannot count is an answer we cannot trust (SPEC 8.1): fail closed.
            log.warning("inbox %d: provider answer unusable: %s", item.id, completion.usage_problem)
            return Answer(
                APOLOGY,
                "failed",
                f"provider answer unusable: {completion.usage_problem}",
                usage,
                latency,
                substituted,
            )
        return Answer(completion.text, "succeeded", None, usage, latency, substituted)

    async def _complete(
        self, item: InboxItem, profile: str | None, text: str, target: Resolved
    ) -> Completion:
        if self.conversation is not None:
            return await self.conversation.ask(
                self.http, target, item, text, profile, env=self.env, now=self.clock.wall()
            )
        return await complete(self.http, target, [{"role": "user", "content": text}], env=self.env)

    async def _note_answer(self, item: InboxItem, usage: TurnUsage) -> str | None:
        """The answering model when it substitutes the asked one (else None); alerts once per
        episode."""
        if self.ledger is None or usage.answered_model is None:
            return None
        opened = await self.ledger.note_answer(
            usage.model, usage.answered_model, usage.provider, self.clock.wall()
        )
        if opened:
            log.warning(
                "model substitution: inbox %d asked %s/%s and %r answered; the spend is "
                "for a model nobody chose (alert once per episode)",
                item.id,
                usage.provider,
                usage.model,
                usage.answered_model,
            )
        return usage.answered_model if is_substitution(usage.model, usage.answered_model) else None

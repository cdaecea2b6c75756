"""Configuration: ``$HERMES_HOME/config.yaml`` plus environment (env wins), SPEC section 2.

Every key is optional. An invalid value falls back to its default with exactly one log line
containing ``WARNING`` and the dotted key; nothing here raises for a bad value. A missing file is
the same as an empty one; an unreadable or unparseable one is one warning and defaults, or a
``StartupError`` when loaded with ``strict=True`` (``run`` and ``dev``, SPEC 8.1).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError, StartupError
from gateway.config_checks import (
    Reader,
    check_bool,
    check_choice,
    check_identities,
    check_int,
    check_num,
    check_str,
    check_text,
    check_tz,
    check_url,
)
from gateway.core.policy import DEFAULT_IDLE_TIMEOUT_MIN, env_flag, idle_timeout_s
from gateway.core.session_reset import MODES as SESSION_RESET_MODES
from gateway.core.session_reset import ResetPolicy
from relay.protocol.framing import DEFAULT_MAX_FRAME_BYTES
from relay.protocol.token import validate_gateway_id
from relay.protocol.urls import normalise_relay_url

log = logging.getLogger("gateway.config")

SUSPEND_MODES = ("autostop", "fly-api", "none")
DRIFT_POLICIES = ("fail_closed", "use_snapshot", "follow_default")
PROVIDER_KINDS = ("openai", "hermes")
TOP_LEVEL_KEYS = ("model", "providers", "profiles", "gateway", "agent", "cron", "kanban", "routing")
ENV_PROVIDER = "openai"
"""The provider ``OPENAI_BASE_URL`` creates when config.yaml names none (SPEC 8.3)."""

RESTART_ONLY = (
    "home",
    "relay_url",
    "relay_identities",
    "relay_max_frame_bytes",
    "relay_id",
    "relay_secret",
    "wake_url",
    "cron_max_concurrent",
    "scale_to_zero.enabled",
    "scale_to_zero.external_waker",
    "scale_to_zero.ack_timeout_s",
)
"""Settings a reload does not change: they are fixed when the sidecar starts (the relay
transport, the arm decision, the scheduler's concurrency)."""


@dataclass(frozen=True)
class Provider:
    """``providers.<name>``. ``kind``: ``openai`` (an OpenAI-compatible API: the turn sends the
    history itself) or ``hermes`` (a hermes-agent API server that keeps the conversation: the
    turn sends only the new message and ``X-Hermes-Session-Id``, SPEC 8.2)."""

    name: str
    base_url: str
    api_key_env: str | None
    kind: str = "openai"


@dataclass(frozen=True)
class Profile:
    """``profiles.<name>``; ``system_prompt`` is stripped, None when unset or blank."""

    name: str
    model: str | None
    provider: str | None
    system_prompt: str | None = None


@dataclass
class ScaleToZero:
    enabled: bool = False
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_MIN * 60
    cooldown_s: float = 60.0
    ack_timeout_s: float = 10.0
    suspend: str = "autostop"
    external_waker: bool = False


@dataclass
class Config:
    """The resolved configuration; times in seconds, money in USD."""

    home: Path
    model_default: str | None = None
    model_provider: str | None = None
    providers: dict[str, Provider] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    relay_url: str | None = None
    relay_identities: list[tuple[str, str]] = field(default_factory=lambda: [("relay", "")])
    relay_max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    relay_id: str | None = None
    relay_secret: str | None = None
    wake_url: str | None = None
    wake_secret: str | None = None
    scale_to_zero: ScaleToZero = field(default_factory=ScaleToZero)
    shutdown_timeout_s: float = 25.0
    delivery_give_up_hours: float = 24.0
    cron_timezone: str = "UTC"
    drift_policy: str = "fail_closed"
    cron_max_concurrent: int = 4
    cron_max_daily_usd: float | None = None
    agent_max_daily_usd: float | None = None
    kanban_default_assignee: str = ""
    kanban_max_in_progress: int | None = 8
    kanban_max_in_progress_per_profile: int | None = None
    routing_enabled: bool = False
    routing_strong_model: str | None = None
    routing_strong_provider: str | None = None
    routing_cheap_model: str | None = None
    routing_error_threshold_pct: float = 6.0
    history_max_turns: int = 20
    context_max_tokens: int = 16000
    session_reset_mode: str = "both"
    session_reset_idle_minutes: float = 1440.0
    session_reset_at_hour: int = 4
    history_retention_days: float = 30.0
    ops_history_retention_days: float = 14.0
    """``gateway.history_retention_days``: days of watcher/relay transitions and wakes kept in
    state.db for the operator page (SPEC 8.5); not ``agent.history_retention_days`` above."""
    warnings: list[str] = field(default_factory=list)

    @property
    def state_db(self) -> Path:
        return self.home / "state.db"

    def update_from(self, other: Config) -> list[str]:
        """Take ``other``'s values in place (a config reload, SPEC 8.3).

        Every component of a running sidecar holds this same object (and the watcher this
        same ``scale_to_zero``), so mutating it is the one swap all of them see. Settings in
        ``RESTART_ONLY`` keep their current value; the dotted names of those that differ in
        ``other`` are returned (they take effect at the next start).
        """
        pending: list[str] = []
        for f in dataclasses.fields(self):
            if f.name == "scale_to_zero":
                continue
            if f.name in RESTART_ONLY:
                if getattr(self, f.name) != getattr(other, f.name):
                    pending.append(f.name)
                continue
            setattr(self, f.name, getattr(other, f.name))
        mine, theirs = self.scale_to_zero, other.scale_to_zero
        for f in dataclasses.fields(mine):
            if f"scale_to_zero.{f.name}" in RESTART_ONLY:
                if getattr(mine, f.name) != getattr(theirs, f.name):
                    pending.append(f"scale_to_zero.{f.name}")
                continue
            setattr(mine, f.name, getattr(theirs, f.name))
        return pending

    @property
    def session_reset(self) -> ResetPolicy:
        """``agent.session_reset.*`` with ``at_hour`` in ``cron.timezone`` (SPEC 8.2)."""
        return ResetPolicy(
            mode=self.session_reset_mode,
            idle_minutes=self.session_reset_idle_minutes,
            at_hour=self.session_reset_at_hour,
            tz=self.cron_timezone,
        )


def hermes_home(env: Mapping[str, str] | None = None) -> Path:
    """``$HERMES_HOME`` or ``./.hermes``."""
    env = os.environ if env is None else env
    return Path(env.get("HERMES_HOME") or ".hermes")


def load_config(
    home: Path | None = None, env: Mapping[str, str] | None = None, *, strict: bool = False
) -> Config:
    """Load ``<home>/config.yaml`` and the environment into a ``Config``; never raises for bad values.

    ``home`` defaults to ``$HERMES_HOME`` (``./.hermes``); ``env`` to ``os.environ``. A missing
    file is the same as an empty one. With ``strict=False`` (management commands) a file that
    cannot be read, is not valid YAML or whose top level is not a mapping is one WARNING and
    all defaults; with ``strict=True`` (``run``, ``dev``: SPEC 8.1, start-up fails fast) it
    raises ``StartupError`` naming the file and the cause. Invalid *values* always fall back to
    their default with one WARNING naming the dotted key.
    """
    env = os.environ if env is None else env
    home = home or hermes_home(env)
    warnings: list[str] = []
    raw: Any = {}
    path = home / "config.yaml"

    def unusable(cause: str) -> None:
        if strict:
            raise StartupError(f"config {path} {cause}")
        msg = f"config {path} {cause}; using defaults"
        warnings.append(msg)
        log.warning(msg)

    if _exists(path, unusable):
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            unusable(f"is unreadable ({exc.strerror or exc})")
            raw = {}
        except UnicodeDecodeError as exc:
            unusable(f"is not UTF-8 text ({exc.reason} at byte {exc.start})")
            raw = {}
        except (yaml.YAMLError, ValueError, RecursionError) as exc:
            unusable(f"is not valid YAML ({_one_line(exc)})")
            raw = {}
    if not isinstance(raw, Mapping):
        unusable(f"is not a mapping (top level is a {type(raw).__name__})")
        raw = {}
    r = Reader(raw, warnings)
    _warn_unknown_keys(raw, r)
    c = Config(home=home, warnings=warnings)
    c.model_default = r.get("model.default", None, check_str, "a model name")
    c.model_provider = r.get("model.provider", None, check_str, "a provider name")
    provs = raw.get("providers") if isinstance(raw.get("providers"), Mapping) else {}
    for name in provs:
        base = r.get(f"providers.{name}.base_url", None, check_url, "an http(s) URL")
        if base is None:
            continue
        key_env = r.get(f"providers.{name}.api_key_env", None, check_str, "an environment name")
        kind = r.get(
            f"providers.{name}.kind",
            "openai",
            check_choice(PROVIDER_KINDS),
            "one of " + ", ".join(PROVIDER_KINDS),
        )
        c.providers[str(name)] = Provider(str(name), base, key_env, kind)
    profs = raw.get("profiles") if isinstance(raw.get("profiles"), Mapping) else {}
    for name in profs:
        c.profiles[str(name)] = Profile(
            str(name),
            r.get(f"profiles.{name}.model", None, check_str, "a model name"),
            r.get(f"profiles.{name}.provider", None, check_str, "a provider name"),
            r.get(f"profiles.{name}.system_prompt", None, check_text, "a string"),
        )
    if "default" not in c.profiles:
        # The implicit default profile pins nothing: it always resolves through model.*.
        c.profiles["default"] = Profile("default", None, None)

    g = "gateway"
    c.relay_url = r.get(
        f"{g}.relay_url", None, normalise_relay_url, "ws(s)/http(s) URL without query or fragment"
    )
    c.relay_identities = r.get(
        f"{g}.relay_identities",
        c.relay_identities,
        check_identities,
        "a non-empty list of {platform, bot_id}",
    )
    c.relay_max_frame_bytes = r.get(
        f"{g}.relay_max_frame_bytes", DEFAULT_MAX_FRAME_BYTES, check_int(1024), "an integer >= 1024"
    )
    s = f"{g}.scale_to_zero"
    z = c.scale_to_zero
    z.idle_timeout_s = (
        r.get(
            f"{s}.idle_timeout_minutes",
            DEFAULT_IDLE_TIMEOUT_MIN,
            lambda v: idle_timeout_s(v) / 60,
            "a number > 0",
        )
        * 60
    )
    z.cooldown_s = r.get(f"{s}.cooldown_seconds", 60.0, check_num(0), "a number >= 0")
    z.ack_timeout_s = r.get(f"{s}.ack_timeout_seconds", 10.0, check_num(0), "a number >= 0")
    z.suspend = r.get(
        f"{s}.suspend", "autostop", check_choice(SUSPEND_MODES), "one of " + ", ".join(SUSPEND_MODES)
    )
    z.external_waker = r.get(f"{s}.external_waker", False, check_bool, "true or false")
    c.ops_history_retention_days = r.get(
        f"{g}.history_retention_days", 14.0, check_num(0, strict=True), "a number of days > 0"
    )
    c.shutdown_timeout_s = r.get(f"{g}.shutdown_timeout_seconds", 25.0, check_num(0), "a number >= 0")
    c.delivery_give_up_hours = r.get(
        "agent.delivery_give_up_hours", 24.0, check_num(0, strict=True), "a number of hours > 0"
    )
    c.history_max_turns = r.get("agent.history_max_turns", 20, check_int(0), "an integer >= 0")
    c.context_max_tokens = r.get("agent.context_max_tokens", 16000, check_int(0), "an integer >= 0")
    c.session_reset_mode = r.get(
        "agent.session_reset.mode",
        "both",
        check_choice(SESSION_RESET_MODES),
        "one of " + ", ".join(SESSION_RESET_MODES),
    )
    c.session_reset_idle_minutes = r.get(
        "agent.session_reset.idle_minutes", 1440.0, check_num(0, strict=True), "a number of minutes > 0"
    )
    c.session_reset_at_hour = r.get("agent.session_reset.at_hour", 4, check_int(0, 23), "an integer 0-23")
    c.history_retention_days = r.get(
        "agent.history_retention_days", 30.0, check_num(0, strict=True), "a number of days > 0"
    )

    c.cron_timezone = r.get("cron.timezone", "UTC", check_tz, "an IANA timezone name")
    c.drift_policy = r.get(
        "cron.drift_policy",
        "fail_closed",
        check_choice(DRIFT_POLICIES),
        "one of " + ", ".join(DRIFT_POLICIES),
    )
    c.cron_max_concurrent = r.get("cron.max_concurrent", 4, check_int(1), "an integer >= 1")
    c.cron_max_daily_usd = r.get("cron.max_daily_usd", None, check_num(0), "a number >= 0")
    c.agent_max_daily_usd = r.get("agent.max_daily_usd", None, check_num(0), "a number >= 0")
    c.kanban_default_assignee = r.get("kanban.default_assignee", "", check_str, "a profile name")
    c.kanban_max_in_progress = r.get("kanban.max_in_progress", 8, check_int(1), "an integer >= 1")
    c.kanban_max_in_progress_per_profile = r.get(
        "kanban.max_in_progress_per_profile", None, check_int(1), "an integer >= 1"
    )
    c.routing_enabled = r.get("routing.enabled", False, check_bool, "true or false")
    c.routing_strong_model = r.get("routing.strong_model", None, check_str, "a model name")
    c.routing_strong_provider = r.get("routing.strong_provider", None, check_str, "a provider name")
    c.routing_cheap_model = r.get("routing.cheap_model", None, check_str, "a model name")
    c.routing_error_threshold_pct = r.get("routing.error_threshold_pct", 6.0, check_num(0), "a number >= 0")
    _apply_env(c, env, r)
    return c


def _warn_unknown_keys(raw: Mapping[str, Any], r: Reader) -> None:
    """One WARNING per unknown top-level key, naming the nearest known key when one is close."""
    for key in raw:
        if key in TOP_LEVEL_KEYS:
            continue
        near = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
        hint = f"did you mean {near[0]!r}?" if near else "known keys: " + ", ".join(TOP_LEVEL_KEYS)
        msg = f"config key {key!r} is unknown and ignored; {hint}"
        r.warnings.append(msg)
        log.warning(msg)


def _exists(path: Path, unusable: Callable[[str], None]) -> bool:
    """Whether ``path`` exists; a stat error other than "not found" (e.g. no permission to
    search the home folder) is reported through ``unusable``."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return False  # a home beneath a file: prepare_home names that cause at start-up
    except OSError as exc:
        unusable(f"is unreadable ({exc.strerror or exc})")
        return False
    return True


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (YAML errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _apply_env(c: Config, env: Mapping[str, str], r: Reader) -> None:
    """Environment wins over config.yaml (SPEC section 2)."""
    c.scale_to_zero.enabled = env_flag(env.get("HERMES_SCALE_TO_ZERO"))
    url = env.get("GATEWAY_RELAY_URL", "").strip()
    if url:
        try:
            c.relay_url = normalise_relay_url(url)
        except ConfigError as exc:
            r.warn("GATEWAY_RELAY_URL", url, str(exc), c.relay_url)
    gid = env.get("GATEWAY_RELAY_ID", "").strip() or None
    if gid is not None:
        try:
            validate_gateway_id(gid)
        except ConfigError as exc:
            r.warn("GATEWAY_RELAY_ID", gid, str(exc), None)
            gid = None
    c.relay_id = gid
    c.relay_secret = env.get("GATEWAY_RELAY_SECRET") or None
    c.wake_url = env.get("GATEWAY_RELAY_WAKE_URL", "").strip() or None
    fly_app = env.get("FLY_APP_NAME", "").strip()
    if c.wake_url is None and fly_app:
        c.wake_url = f"https://{fly_app}.fly.dev/wake"
    c.wake_secret = env.get("HERMES_WAKE_SECRET") or None
    _apply_env_provider(c, env, r)


def _apply_env_provider(c: Config, env: Mapping[str, str], r: Reader) -> None:
    """The deploy essentials (SPEC 8.3): ``HERMES_MODEL`` is ``model.default``; with no provider
    in config.yaml, ``OPENAI_BASE_URL`` makes provider ``openai`` (its key read from
    ``OPENAI_API_KEY``), which becomes ``model.provider`` unless that is set."""
    model = env.get("HERMES_MODEL", "").strip()
    if model:
        c.model_default = model
    base = env.get("OPENAI_BASE_URL", "").strip()
    if not base:
        return
    if c.providers:
        log.info("OPENAI_BASE_URL ignored: config.yaml defines providers (%s)", ", ".join(c.providers))
        return
    try:
        url = check_url(base)
    except (TypeError, ValueError):
        r.warn("OPENAI_BASE_URL", base, "an http(s) URL", None)
        return
    c.providers[ENV_PROVIDER] = Provider(ENV_PROVIDER, url, "OPENAI_API_KEY")
    if c.model_provider is None:
        c.model_provider = ENV_PROVIDER

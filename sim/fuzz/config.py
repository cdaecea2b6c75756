"""The ``config`` target: ``load_config`` on random config.yaml files and env overrides (SPEC 2
and docs/configuration.md: a bad value never crashes the sidecar)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hypothesis import strategies as st

import gateway.config as gateway_config
from common.errors import StartupError
from sim.fuzz.harness import SURROGATES, TargetResult, _pick, plain_texts, require, run_target

SHM = Path("/dev/shm")

CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("default", "provider"),
    "gateway": (
        "relay_url",
        "relay_identities",
        "relay_max_frame_bytes",
        "shutdown_timeout_seconds",
        "history_retention_days",
        "scale_to_zero",
    ),
    "agent": (
        "delivery_give_up_hours",
        "history_max_turns",
        "context_max_tokens",
        "session_reset",
        "history_retention_days",
        "max_daily_usd",
    ),
    "cron": ("timezone", "drift_policy", "max_concurrent", "max_daily_usd"),
    "kanban": ("default_assignee", "max_in_progress", "max_in_progress_per_profile"),
    "routing": ("enabled", "strong_model", "strong_provider", "cheap_model", "error_threshold_pct"),
}
"""The config.yaml keys of docs/configuration.md, by section."""
NESTED_KEYS = {
    "scale_to_zero": (
        "idle_timeout_minutes",
        "cooldown_seconds",
        "ack_timeout_seconds",
        "suspend",
        "external_waker",
    ),
    "session_reset": ("mode", "idle_minutes", "at_hour"),
}
ENV_NAMES = (
    "HERMES_MODEL",
    "HERMES_SCALE_TO_ZERO",
    "GATEWAY_RELAY_URL",
    "GATEWAY_RELAY_ID",
    "GATEWAY_RELAY_SECRET",
    "GATEWAY_RELAY_WAKE_URL",
    "HERMES_WAKE_SECRET",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "FLY_APP_NAME",
)
"""The environment overrides ``load_config`` reads (docs/configuration.md, hermes-sidecar)."""
yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**64, -1, 0, 1023, 1024, 23, 24])
    | st.floats()
    | plain_texts
    | _pick(
        (
            "UTC",
            "Europe/Berlin",
            "America",
            "zone.tab",
            "tzdata.zi",
            "posixrules",
            "../etc/passwd",
            "/etc/localtime",
            "a" * 300,
            "",
            "30",
            " 1e999 ",
            "nan",
            "http://x",
            "https://h/v1/",
            "http://[::1",
            "ws://relay:1/x?q",
            "wss://[::1]:99999",
            "autostop",
            "fly-api",
            "both",
            "openai",
            "hermes",
            "fail_closed",
        )
    )
)
"""YAML scalars: right and wrong types, odd numbers, names of tz files that are not zones."""
url_texts = st.sampled_from(["http://", "https://", "ws://", "wss://", "ftp://", "http://[", ""]).flatmap(
    lambda scheme: st.text(st.characters(codec="ascii"), max_size=20).map(lambda rest: scheme + rest)
)
yaml_values = st.recursive(
    yaml_scalars | url_texts,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(plain_texts | st.sampled_from(["platform", "bot_id"]), inner, max_size=3)
    ),
    max_leaves=6,
)


def _section(keys: tuple[str, ...]) -> st.SearchStrategy[Any]:
    values: dict[str, st.SearchStrategy[Any]] = {}
    for key in keys:
        nested = NESTED_KEYS.get(key)
        values[key] = (
            st.fixed_dictionaries({}, optional={k: yaml_values for k in nested}) | yaml_values
            if nested
            else yaml_values
        )
    return st.fixed_dictionaries({}, optional=values) | yaml_values


named = st.dictionaries(
    plain_texts | st.sampled_from(["default", "openai", "a.b"]),
    st.fixed_dictionaries(
        {},
        optional={
            k: yaml_values | url_texts
            for k in ("base_url", "api_key_env", "kind", "model", "provider", "system_prompt")
        },
    )
    | yaml_values,
    max_size=3,
)
config_documents = st.fixed_dictionaries(
    {},
    optional={
        **{section: _section(keys) for section, keys in CONFIG_KEYS.items()},
        "providers": named | yaml_values,
        "profiles": named | yaml_values,
        "modle": yaml_values,
    },
)
"""config.yaml documents with the real keys of docs/configuration.md and random values."""
NASTY_YAML = (
    "a: &x [*x]\n",
    "gateway: &g {scale_to_zero: *g}\n",
    "? [a, b]\n: c\n",
    "{[1]: 2}\n",
    "!!python/object:os.system {}\n",
    "!!binary aGVsbG8=\n",
    "!!set {a, b}\n",
    "cron: {timezone: 2001-12-14}\n",
    "cron: {max_concurrent: 1_000}\n",
    "agent: {history_max_turns: 0x10}\n",
    "agent: {history_max_turns: 1" + "0" * 5000 + "}\n",
    "gateway: {scale_to_zero: {idle_timeout_minutes: .inf}}\n",
    "gateway: {scale_to_zero: {idle_timeout_minutes: 1e308}}\n",
    "gateway:\n  <<: {relay_url: ws://x}\n",
    "- " * 300 + "x",
    "a: 1\na: 2\n",
    "%YAML 1.1\n---\na: 1\n",
    "--- 1\n--- 2\n",
    "\ufeffmodel: {default: x}\n",
    'model: {default: "\\ud800"}\n',
    "\t",
    "",
    "null",
    "[]",
)
nasty_yaml = _pick(NASTY_YAML)
DEEP_YAML = "[" * 500 + "]" * 500
"""Nesting past the recursion limit of PyYAML's (pure Python) composer: a ``RecursionError``.
Slow to parse (~0.1 s), so one example in ``DEEP_ONE_IN`` is this one."""
DEEP_ONE_IN = 100
"""YAML that is recursive, tagged, deeply nested, multi-document, or not a mapping."""


env_texts = (
    plain_texts
    | st.sampled_from(SURROGATES)
    | url_texts
    | st.sampled_from(["1", "on", "http://[::1", "a:b", " "])
)
"""Env values (os.environ keeps undecodable bytes as lone surrogates)."""
envs = st.dictionaries(st.sampled_from(ENV_NAMES), env_texts, max_size=4)
layouts = st.sampled_from(["doc", "doc", "doc", "nasty", "text", "bytes", "none", "dir"])
deep_dice = st.sampled_from(range(DEEP_ONE_IN))


@st.composite
def _config_cases(draw: st.DrawFn) -> tuple[bytes | None, dict[str, str]]:
    """``(config.yaml bytes or None for no file, env)``."""
    how = draw(layouts)
    if draw(deep_dice) == DEEP_ONE_IN - 1:
        how = "deep"
    data: bytes | None
    if how == "deep":
        data = DEEP_YAML.encode()
    elif how == "doc":
        from yaml import safe_dump

        doc = draw(config_documents)
        try:
            data = safe_dump(doc, allow_unicode=draw(st.booleans())).encode("utf-8")
        except (ValueError, OverflowError):
            data = b"{}"
    elif how == "nasty":
        data = draw(nasty_yaml).encode("utf-8", "surrogatepass")
    elif how == "text":
        data = draw(plain_texts).encode("utf-8")
    elif how == "bytes":
        data = draw(st.binary(max_size=60))
    elif how == "dir":
        data = b"<dir>"
    else:
        data = None
    return data, draw(envs)


def _finite(value: Any, minimum: float, strict: bool = False) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )


def check_config_values(c: gateway_config.Config) -> None:
    """Every resolved value has the type and range docs/configuration.md allows."""
    from zoneinfo import ZoneInfo

    ZoneInfo(c.cron_timezone)
    require(c.relay_url is None or c.relay_url.startswith(("ws://", "wss://")), f"relay_url {c.relay_url!r}")
    require(
        bool(c.relay_identities)
        and all(isinstance(p, str) and isinstance(b, str) for p, b in c.relay_identities),
        f"relay_identities {c.relay_identities!r}",
    )
    require(
        isinstance(c.relay_max_frame_bytes, int) and c.relay_max_frame_bytes >= 1024, "relay_max_frame_bytes"
    )
    for p in c.providers.values():
        url = urlsplit(p.base_url)
        require(url.scheme in ("http", "https") and bool(url.hostname), f"base_url {p.base_url!r}")
        require(p.kind in gateway_config.PROVIDER_KINDS, f"kind {p.kind!r}")
    z = c.scale_to_zero
    require(z.idle_timeout_s > 0, f"idle_timeout_s {z.idle_timeout_s}")
    require(_finite(z.cooldown_s, 0) and _finite(z.ack_timeout_s, 0), "cooldown/ack_timeout")
    require(z.suspend in gateway_config.SUSPEND_MODES, f"suspend {z.suspend!r}")
    require(_finite(c.shutdown_timeout_s, 0), "shutdown_timeout_s")
    require(_finite(c.delivery_give_up_hours, 0, strict=True), "delivery_give_up_hours")
    require(_finite(c.history_retention_days, 0, strict=True), "history_retention_days")
    require(_finite(c.ops_history_retention_days, 0, strict=True), "ops_history_retention_days")
    require(_finite(c.session_reset_idle_minutes, 0, strict=True), "session_reset_idle_minutes")
    require(c.session_reset_at_hour in range(24), "session_reset_at_hour")
    require(c.drift_policy in gateway_config.DRIFT_POLICIES, f"drift_policy {c.drift_policy!r}")
    require(isinstance(c.cron_max_concurrent, int) and c.cron_max_concurrent >= 1, "cron_max_concurrent")
    for name in ("cron_max_daily_usd", "agent_max_daily_usd"):
        value = getattr(c, name)
        require(value is None or _finite(value, 0), f"{name} {value!r}")
    require(_finite(c.routing_error_threshold_pct, 0), "routing_error_threshold_pct")
    require(
        c.relay_id is None or (":" not in c.relay_id and "=" not in c.relay_id), f"relay_id {c.relay_id!r}"
    )


def check_config(case: tuple[bytes | None, dict[str, str]]) -> None:
    """``load_config(home, env)`` with ``strict=False`` never raises and resolves every value
    into its documented type and range (docs/configuration.md "A bad value never crashes the
    sidecar"); with ``strict=True`` the only exception is ``StartupError``, raised exactly when
    the non-strict load warned that the file is unusable and used all defaults."""
    data, env = case
    parent = str(SHM) if SHM.is_dir() else None
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        home = Path(tmp)
        path = home / "config.yaml"
        if data == b"<dir>":
            path.mkdir()
        elif data is not None:
            path.write_bytes(data)
        try:
            c = gateway_config.load_config(home, env, strict=True)
        except StartupError:
            c = gateway_config.load_config(home, env, strict=False)
            require(_unusable(c, path), "strict load refused a file the lenient load used")
        else:
            # A usable file loads the same either way: one (strict) load stands for both.
            require(not _unusable(c, path), "strict load used a file it called unusable")
        check_config_values(c)


def _unusable(c: gateway_config.Config, path: Path) -> bool:
    """Whether the load warned that the file is unusable and took all defaults."""
    return any(w.startswith(f"config {path} ") and w.endswith("; using defaults") for w in c.warnings)


def fuzz_config(examples: int) -> TargetResult:
    """``load_config`` on config.yaml files from random documents with the real keys (and
    random text, bytes, hostile YAML, no file, a directory) and random env overrides."""
    return run_target("config", examples, _config_cases(), check_config)

"""The ``cli`` target: the argument parsers of ``hermes-sidecar`` and ``hermes-relay`` and the
checks that run before any command does, on argv lists built from the parsers' own options (a
usage error is one line and exit 2)."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass

from hypothesis import strategies as st

import gateway.cli as gateway_cli
import relay.cli as relay_cli
from common.errors import ConfigError
from sim.fuzz.harness import TargetResult, numbers, plain_texts, require, run_target, show


@dataclass(frozen=True)
class Command:
    """One (sub-)command of a parser: its ``path`` of names, its option strings (``flags``
    take no value; ``good`` holds values each option accepts), its positional arguments and
    required options: what a clean parse needs."""

    path: tuple[str, ...]
    options: tuple[str, ...]
    flags: frozenset[str]
    good: dict[str, tuple[str, ...]]
    positionals: int
    required: tuple[str, ...]
    leaf: bool


TYPED_GOOD = ("1", "7", "0", "0.5", "1024", "8080", "65535")
TEXT_GOOD = ("x", "gw=secret", "gw=1:tok", "telegram:1", "every 30m", "http://127.0.0.1:1", "UTC")


def _good(action: argparse.Action) -> tuple[str, ...]:
    if action.choices is not None:
        return tuple(str(c) for c in action.choices)
    return TYPED_GOOD if action.type is not None else TEXT_GOOD


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Command]:
    """``parser`` and every sub-command under it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    options = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    out = [
        Command(
            path,
            tuple(sorted(o for a in options for o in a.option_strings)),
            frozenset(o for a in options if a.nargs == 0 for o in a.option_strings),
            {o: _good(a) for a in options for o in a.option_strings},
            sum(1 for a in parser._actions if not a.option_strings and a not in subs),
            tuple(a.option_strings[0] for a in options if a.required),
            not subs,
        )
    ]
    for action in subs:
        for name, sub in action.choices.items():
            out.extend(_commands(sub, (*path, name)))
    return out


ODD_WORDS = ("-", "--", "-1", "nan", "inf", "-inf", "1e999", "65536", "0", "a:b", "x=1:2", "--h", "-hx")
values = st.one_of(plain_texts, numbers.map(show), st.sampled_from(ODD_WORDS))
"""Option values: random text, numbers of every size, odd words."""


def _words(tokens: list[str]) -> st.SearchStrategy[str]:
    """One argv word: a real option, ``--option=value``, option-like or random text, a number."""
    real = st.sampled_from(tokens) if tokens else st.just("--help")
    return st.one_of(
        real,
        real,
        st.builds(lambda t, v: f"{t}={v}", real, values),
        values,
        plain_texts.map(lambda t: "--" + t),
        plain_texts.map(lambda t: "-" + t),
    )


@st.composite
def _clean(draw: st.DrawFn, c: Command) -> list[str]:
    """A leaf command with its required options, some others (a value after each that takes
    one) and its positionals: mostly parses cleanly, with odd values."""
    argv = list(c.path)
    chosen = [*c.required, *draw(st.lists(st.sampled_from(c.options), max_size=4))] if c.options else []
    for option in chosen:
        argv.append(option)
        if option not in c.flags:
            argv.append(draw(st.sampled_from(c.good[option]) | st.sampled_from(c.good[option]) | values))
    argv.extend(draw(st.lists(values, min_size=c.positionals, max_size=c.positionals)))
    return argv


def _argv(parser: argparse.ArgumentParser) -> st.SearchStrategy[list[str]]:
    """argv lists: a leaf command with its options and odd values, a command path followed by
    random words (its options among them), or random words from the start."""
    commands = _commands(parser)
    leaves = [c for c in commands if c.leaf]
    every = sorted({o for c in commands for o in c.options} | {n for c in commands for n in c.path} | {"-h"})
    return st.one_of(
        st.sampled_from(leaves).flatmap(_clean),
        st.sampled_from(leaves).flatmap(_clean),
        st.sampled_from(commands).flatmap(
            lambda c: st.lists(_words(list(c.options)), max_size=6).map(lambda rest: [*c.path, *rest])
        ),
        st.lists(_words(every), max_size=6),
    )


def _parse(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace | None, int | None, str]:
    """``parse_args`` with its output captured: ``(namespace, None, "")`` or ``(None, exit code,
    output)`` for ``SystemExit``."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return parser.parse_args(argv), None, ""
        except SystemExit as exc:
            return None, exc.code if isinstance(exc.code, int) else -1, out.getvalue()


def _asked_help(argv: list[str]) -> bool:
    return any(a.startswith("-h") or a.startswith("--h") for a in argv)


def check_gateway_argv(parser: argparse.ArgumentParser, argv: list[str], metrics_port: str) -> None:
    """``hermes-sidecar``: a clean parse, ``UsageError`` (main prints one line, exit 2) or help
    (exit 0); then the checks ``main`` makes before running anything (``$PORT`` as ``--port``,
    ``dev``'s derived connector port, the metrics port from ``$METRICS_PORT`` or derived) give
    ports in 1-65535 or raise ``argparse.ArgumentTypeError``, exit 2 (gateway/cli/__init__.py)."""
    try:
        args, code, _ = _parse(parser, argv)
    except gateway_cli.UsageError:
        return
    if args is None:
        require(code == 0 and _asked_help(argv), f"exit {code}")
        return
    try:
        if isinstance(getattr(args, "port", 0), str):
            args.port = gateway_cli._port(args.port)
        if args.command == "dev" and not args.relay_port and args.port:
            require(gateway_cli.derived_port(args.port, 1, "--relay-port") <= 65535, "relay port")
        if args.command in ("run", "dev"):
            port = gateway_cli.metrics_port_of(args, {"METRICS_PORT": metrics_port})
            require(port is None or 0 < port <= 65535, f"metrics port {port}")
    except argparse.ArgumentTypeError:
        return


def check_relay_argv(parser: argparse.ArgumentParser, argv: list[str], env: dict[str, str]) -> None:
    """``hermes-relay``: a clean parse or ``SystemExit`` 2 with one ``hermes-relay ...: error:``
    message (or 0 for help); then the ``--gateway``/``--telegram`` items merged with
    ``RELAY_GATEWAYS``/``RELAY_TELEGRAM`` give a dict or ``ConfigError`` (exit 2), and the
    ``--host`` loopback check answers a bool (relay/cli.py)."""
    args, code, output = _parse(parser, argv)
    if args is None:
        require(
            (code == 2 and output.startswith("hermes-relay")) or (code == 0 and _asked_help(argv)),
            f"exit {code}: {output[:200]!r}",
        )
        return
    with contextlib.suppress(ConfigError):
        bots = relay_cli.parse_telegram(args.telegram, env.get("RELAY_TELEGRAM"))
        require(all(":" in token for token in bots.values()), f"bots {bots!r}")
    if args.command == "serve":
        with contextlib.suppress(ConfigError):
            secrets = relay_cli.parse_gateways(args.gateway, env.get("RELAY_GATEWAYS"))
            require(all(gid and secret for gid, secret in secrets.items()), f"secrets {secrets!r}")
        require(isinstance(relay_cli.is_loopback(args.host), bool), "is_loopback")


def fuzz_cli(examples: int) -> TargetResult:
    """The command lines of ``hermes-sidecar`` and ``hermes-relay``: argv lists of real
    options, commands, option-like and random strings (and random ``$METRICS_PORT``,
    ``RELAY_GATEWAYS``, ``RELAY_TELEGRAM``) parse or fail the documented way; no command runs."""
    g_parser, r_parser = gateway_cli.build_parser(), relay_cli.build_parser()
    env_text = plain_texts | st.sampled_from(["a=b", "a=1:x", "=x", "a:b=c", "a=b,c=d", ",", "a=\u00e9:1"])
    strategy = st.one_of(
        st.tuples(st.just("gateway"), _argv(g_parser), env_text.map(lambda t: {"METRICS_PORT": t})),
        st.tuples(
            st.just("relay"),
            _argv(r_parser),
            st.fixed_dictionaries({}, optional={"RELAY_GATEWAYS": env_text, "RELAY_TELEGRAM": env_text}),
        ),
    )

    def check(case: tuple[str, list[str], dict[str, str]]) -> None:
        which, argv, env = case
        if which == "gateway":
            check_gateway_argv(g_parser, argv, env["METRICS_PORT"])
        else:
            check_relay_argv(r_parser, argv, env)

    return run_target("cli", examples, strategy, check)

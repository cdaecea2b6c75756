"""Every flag and argument of the management commands has a help line (SPEC 2)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from gateway.cli import build_parser

COMMANDS = ("cron", "kanban", "telemetry", "routing")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def _walk(name: str, parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        yield name, action
        if isinstance(action, argparse._SubParsersAction):
            helped = {c.dest for c in action._choices_actions if c.help}
            for sub_name, sub in action.choices.items():
                assert sub_name in helped, f"{name} {sub_name} has no help"
                yield from _walk(f"{name} {sub_name}", sub)


def test_every_management_flag_has_help() -> None:
    top = _subparsers(build_parser())
    missing = []
    seen = 0
    for command in COMMANDS:
        for where, action in _walk(command, top.choices[command]):
            seen += 1
            if not (action.help or "").strip():
                missing.append(f"{where}: {'/'.join(action.option_strings) or action.dest}")
    assert seen > 40
    assert missing == []

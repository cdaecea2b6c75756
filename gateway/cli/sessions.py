"""``hermes-sidecar sessions list|show|reset``: conversations (SPEC 8.2) from the shell.

``list`` and ``show`` only read; ``reset PLATFORM:CHAT_ID`` ends the chat's open session(s)
(any bot id and thread), like ``/new``, and notifies a running sidecar. Every command has
``--json``; bad input exits 2 with one line and writes nothing. A home without state.db is read
as having no sessions and nothing is created.
"""

from __future__ import annotations

import argparse
from typing import Any

from common.clock import SystemClock
from common.timefmt import rfc3339
from gateway.config import Config
from gateway.conversation.store import SessionStore
from gateway.mgmt import Exit, emit, notify, open_db

LIST_HINT = "see 'hermes-sidecar sessions list'"


def _chat(text: str) -> tuple[str, str]:
    """``PLATFORM:CHAT_ID`` split at the first ``:`` (chat ids may hold more); both non-empty."""
    platform, sep, chat_id = text.partition(":")
    if not sep or not platform or not chat_id:
        raise argparse.ArgumentTypeError(f"chat {text!r} must be PLATFORM:CHAT_ID (e.g. telegram:12345)")
    return platform, chat_id


def _session_id(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"session id {text!r} is not an integer ({LIST_HINT})") from None


def add_parsers(sub: Any, parser_class: Any) -> None:
    s = sub.add_parser("sessions", help="conversations: sessions per chat and their messages")
    ssub = s.add_subparsers(dest="sessions_cmd", required=True, parser_class=parser_class)
    ls = ssub.add_parser("list", help="sessions, newest first")
    ls.add_argument("--chat", type=_chat, metavar="PLATFORM:CHAT_ID", help="only this chat's sessions")
    ls.add_argument("--json", action="store_true")
    sh = ssub.add_parser("show", help="one session and its messages in order")
    sh.add_argument("id", type=_session_id)
    sh.add_argument("--json", action="store_true")
    r = ssub.add_parser("reset", help="end a chat's open session: its next message starts a new one")
    r.add_argument("chat", type=_chat, metavar="PLATFORM:CHAT_ID")
    r.add_argument("--json", action="store_true")


def _when(ts: float | None) -> str:
    return "-" if ts is None else rfc3339(ts)


def session_line(row: dict[str, Any]) -> str:
    """One session as a line of ``sessions list``."""
    state = "open" if row["ended_at"] is None else f"ended {_when(row['ended_at'])}"
    return (
        f"#{row['id']}  {row['platform']}:{row['chat_id']}  bot={row['bot_id'] or '-'}"
        f"  thread={row['thread_id'] or '-'}  [{state}]  {row['message_count']} message(s)"
        f"  created {_when(row['created_at'])}  last {_when(row['last_at'])}"
    )


async def run(args: argparse.Namespace, config: Config) -> int:
    cmd = args.sessions_cmd
    if not config.state_db.exists():  # reading (or resetting) no sessions creates nothing
        if cmd == "list":
            emit(args.json, [], "no sessions")
            return 0
        if cmd == "show":
            raise Exit(2, f"unknown session id {args.id}; {LIST_HINT}")
        platform, chat_id = args.chat
        doc = {"platform": platform, "chat_id": chat_id, "ended": [], "notified": False}
        emit(args.json, doc, f"no open session for {platform}:{chat_id}")
        return 0
    db = await open_db(config)
    try:
        store = SessionStore(db)
        if cmd == "list":
            platform, chat_id = args.chat if args.chat else (None, None)
            rows = await store.list_sessions(platform, chat_id)
            emit(args.json, rows, "\n".join(session_line(r) for r in rows) or "no sessions")
            return 0
        if cmd == "show":
            row = await store.get(args.id)
            if row is None:
                raise Exit(2, f"unknown session id {args.id}; {LIST_HINT}")
            messages = await store.messages(args.id)
            doc = {**row, "messages": [{"role": m.role, "content": m.content, "at": m.at} for m in messages]}
            lines = [session_line(row)] + [f"[{_when(m.at)}] {m.role}: {m.content}" for m in messages]
            emit(args.json, doc, "\n".join(lines))
            return 0
        platform, chat_id = args.chat
        ended = await store.end_chat(platform, chat_id, SystemClock().wall())
        notified = await notify(config)
        doc = {"platform": platform, "chat_id": chat_id, "ended": ended, "notified": notified}
        text = (
            f"ended session(s) {', '.join(f'#{i}' for i in ended)} of {platform}:{chat_id};"
            " its next message starts a new session"
            if ended
            else f"no open session for {platform}:{chat_id}"
        )
        emit(args.json, doc, text)
        return 0
    finally:
        await db.close()

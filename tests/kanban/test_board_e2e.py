"""The board in the running sidecar, end to end on real processes on 127.0.0.1: per-profile
caps hold inbound turns back one at a time, running tasks keep the sidecar awake, and the
``kanban`` commands hand work to the running sidecar."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from gateway.kanban.store import TaskStore
from gateway.statedb import open_state_db
from tests.fake_llm import FakeLLM, provider_config
from tests.procs import Proc, free_port
from tests.stack import Stack

pytestmark = pytest.mark.timeout(90)


def kanban(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "kanban", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HERMES_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )


async def test_per_profile_cap_runs_one_at_a_time_and_keeps_the_sidecar_awake(
    tmp_path: Path, llm: FakeLLM
) -> None:
    """max_in_progress_per_profile 1 and a provider taking 0.8 s per answer: three messages for
    profile alpha (three chats, so no per-chat ordering is involved) run one at a time; the
    idle timeout (1.2 s) passes while they run and the sidecar stays live until the last
    answer, then goes dormant."""
    llm.delay = 0.8
    st = Stack(tmp_path, llm)
    (st.home / "config.yaml").write_text(
        provider_config(llm.base_url)
        + "profiles: {alpha: {}}\nkanban: {max_in_progress_per_profile: 1}\n"
        + "gateway: {scale_to_zero: {idle_timeout_minutes: 0.02, cooldown_seconds: 1}}\n"
    )
    await st.start_relay()
    sc = await st.start_sidecar()
    try:
        async with aiohttp.ClientSession() as s:
            for i in range(3):
                async with s.post(
                    f"{st.relay_base}/ingress/relay",
                    json={
                        "chat_id": f"c{i}",
                        "user_id": "u1",
                        "text": f"question {i}",
                        "message_id": f"m{i}",
                        "profile": "alpha",
                    },
                ) as r:
                    assert r.status == 202
        await sc.wait_for_line("task 1 dispatched to alpha")
        code, doc = await st.get(f"{st.base}/status")  # within the first 0.8 s answer
        assert (doc["running_turns"], doc["tasks"]["running"]) == (1, 1)
        for _ in range(3):
            await sc.wait_for_line("turn succeeded", start=_after_last(sc.lines, "turn succeeded"))
        last_turn = _after_last(sc.lines, "turn succeeded")
        assert llm.max_in_flight == 1
        assert any("at per-profile cap" in line for line in sc.lines)
        assert not any("-> draining" in line for line in sc.lines[:last_turn])
        await sc.wait_for_line("watcher draining -> dormant", start=last_turn)
        code, tasks = await st.get(f"{st.base}/status")
        assert code == 200
        assert tasks["state"] == "dormant"
        listed = json.loads(kanban(st.home, "list", "--json").stdout)
        assert [(t["source"], t["assignee"], t["status"]) for t in listed] == [
            ("inbound", "alpha", "done")
        ] * 3
    finally:
        await st.close()


def _after_last(lines: list[str], needle: str) -> int:
    """Index just past the last line containing ``needle`` (0 when none)."""
    for i in range(len(lines) - 1, -1, -1):
        if needle in lines[i]:
            return i + 1
    return 0


async def test_kanban_commands_hand_work_to_the_running_sidecar(tmp_path: Path, llm: FakeLLM) -> None:
    """`kanban create` notifies the sidecar, which runs the task at once; `kanban dispatch` is
    handed to it; a task for an unknown profile is blocked and the sidecar keeps running."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(provider_config(llm.base_url))
    proc = await Proc(
        [sys.executable, "-m", "gateway", "run", "--port", str(free_port())], env={"HERMES_HOME": str(home)}
    ).start()
    try:
        await proc.wait_for_line("hermes-sidecar started")
        made = kanban(
            home, "create", "--title", "summarise", "--body", "the news", "--assignee", "default", "--json"
        )
        assert made.returncode == 0, made.stderr
        task_id = json.loads(made.stdout)["id"]
        await proc.wait_for_line(f"task {task_id} done")
        ghost = kanban(home, "create", "--title", "haunt", "--assignee", "ghost")
        assert ghost.returncode == 2  # the CLI refuses an unknown profile up front
        assert "known profiles: default" in ghost.stderr
        # A task whose profile is gone by dispatch time (e.g. removed from config) is blocked.
        db = await open_state_db(home / "state.db")
        try:
            made_ghost = await TaskStore(db).create(title="haunt", assignee="ghost", now=time.time())
            assert made_ghost is not None
        finally:
            await db.close()
        handed = kanban(home, "dispatch", "--json")
        assert handed.returncode == 0, handed.stderr
        doc = json.loads(handed.stdout)
        assert doc["spawned"] == []
        assert [b[:2] for b in doc["blocked"]] == [[made_ghost.id, "ghost"]]
        await proc.wait_for_line("blocked: unknown profile 'ghost'")
        await proc.wait_for_line("kanban dispatch handed over")
        rows = {t["id"]: t for t in json.loads(kanban(home, "list", "--json").stdout)}
        assert (rows[task_id]["status"], rows[task_id]["result"]) == ("done", "echo: summarise\n\nthe news")
        assert rows[task_id + 1]["status"] == "blocked"
        assert proc.proc is not None
        assert proc.proc.returncode is None  # still serving
    finally:
        await proc.stop()


async def test_inbound_for_an_unknown_profile_is_blocked_and_told_why(tmp_path: Path, llm: FakeLLM) -> None:
    """A message for profile "ghost": its task is blocked naming the known profiles, the user
    is told once, no provider call is made, and the next message is answered as usual."""
    st = Stack(tmp_path, llm)
    st.write_config(idle_minutes=10)
    await st.start_relay()
    sc = await st.start_sidecar()
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{st.relay_base}/ingress/relay",
                json={"chat_id": "c1", "user_id": "u1", "text": "boo", "message_id": 1, "profile": "ghost"},
            ) as r,
        ):
            assert r.status == 202
        await sc.wait_for_line("(chat c1) blocked")
        await st.ingress("hello", 2)
        await sc.wait_for_line("turn succeeded")
        assert await st.replies() == [
            "This agent cannot answer yet: unknown profile 'ghost' (known profiles: default).",
            "echo: hello",
        ]
        assert len(llm.requests) == 1
        listed = json.loads(kanban(st.home, "list", "--json").stdout)
        assert [(t["assignee"], t["status"]) for t in listed] == [("default", "done"), ("ghost", "blocked")]
    finally:
        await st.close()

"""The simulator (SPEC 8.4): deterministic, clean on the real code, and able to fail."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import gateway.runtime.watcher as watcher_module
from gateway.core.policy import IdleInputs
from relay.connector.session import SessionHandler
from sim.run import run_seed

ROOT = Path(__file__).resolve().parents[2]


async def test_the_same_seed_replays_the_same_trace() -> None:
    first = await run_seed(21)
    second = await run_seed(21)
    assert first.ok, first.trace[-30:]
    assert len(first.trace) > 20
    assert first.trace == second.trace


def test_the_command_prints_the_same_bytes_for_a_seed() -> None:
    """``python -m sim --seed S`` twice: the same trace, byte for byte (the CLI fixes the hash
    seed); only the summary's wall-clock seconds may differ."""
    outs = [
        subprocess.run(
            [sys.executable, "-m", "sim", "--seed", "7"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(2)
    ]
    assert [o.returncode for o in outs] == [0, 0], outs[0].stderr
    traces = [[line for line in o.stdout.splitlines() if line.startswith("    ")] for o in outs]
    assert len(traces[0]) > 20
    assert traces[0] == traces[1]
    assert "accepted" in outs[0].stdout


async def test_thirty_schedules_keep_the_promise_under_every_kind_of_fault() -> None:
    faults: Counter[str] = Counter()
    accepted = 0
    for seed in range(30):
        v = await run_seed(seed)
        assert v.ok, (seed, v.lost, v.duplicated, v.stranded, v.violations, v.trace[-40:])
        assert v.answered == v.accepted
        faults.update(v.faults)
        accepted += v.accepted
    assert accepted > 100
    for kind in (
        "socket_drop",
        "socket_drop_mid",
        "ack_lost",
        "ack_late",
        "duplicate",
        "poke_lost",
        "poke_early",
        "crash_sidecar",
        "crash_connector",
        "sqlite_busy",
        "sqlite_slow_read",
        "sqlite_fail",
        "provider_failure",
        "provider_garbage",
    ):
        assert faults[kind] > 0, kind


async def test_a_connector_that_ignores_acks_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SessionHandler, "_on_ack", lambda self, s, frame: None)
    v = await run_seed(1)
    assert not v.ok
    assert any("unacked" in line for line in v.stranded), v.stranded


async def test_the_idle_rounding_bug_it_found_is_caught_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher bug the simulator found (see ``gateway.core.policy.is_idle``), put back, is
    found again within 100 seeds."""

    def old_is_idle(i: IdleInputs) -> bool:
        if i.busy or (i.next_due_in is not None and i.next_due_in <= i.timeout):
            return False
        return i.now - i.idle_since >= i.timeout

    monkeypatch.setattr(watcher_module, "is_idle", old_is_idle)
    for seed in range(100):  # found at seed 22 with today's schedule generator
        v = await run_seed(seed)
        if any("livelock" in line and "watcher.py" in line for line in v.violations):
            return
    pytest.fail("the simulator no longer finds the idle rounding bug within 100 seeds")


def test_json_tally_has_the_spec_fields_and_a_failing_seed_names_its_reproduction() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sim", "--seeds", "3", "--json", "--workers", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    for key in (
        "schedules",
        "faults",
        "accepted",
        "answered",
        "lost",
        "duplicated",
        "stranded",
        "violations",
    ):
        assert key in doc
    assert doc["schedules"] == 3
    assert doc["lost"] == doc["duplicated"] == doc["stranded"] == 0
    assert doc["violations"] == []


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "ten"], ["--seed", "-1"]], ids=str)
def test_bad_arguments_exit_2_naming_the_value(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sim", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert argv[1] in out.stderr
    assert "Traceback" not in out.stderr

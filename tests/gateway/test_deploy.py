"""The Fly recipe (SPEC sections 4 and 8.3): both fly.toml files carry the settings the spec
names, and the commands docs/deploy.md shows for our own CLIs parse with our argparse."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser as sidecar_parser
from relay.cli import build_parser as relay_parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _toml(app: str) -> dict[str, Any]:
    return tomllib.loads((DEPLOY / app / "fly.toml").read_text())


def test_sidecar_fly_toml_suspends_and_keeps_metrics_private() -> None:
    t = _toml("sidecar")
    assert (t["kill_signal"], t["kill_timeout"]) == ("SIGTERM", 30)
    assert t["mounts"]["destination"] == "/data"
    env = t["env"]
    assert env["HERMES_HOME"] == "/data"
    assert env["HERMES_SCALE_TO_ZERO"] == "1"
    assert "GATEWAY_RELAY_WAKE_URL" not in env  # derived from FLY_APP_NAME
    (svc,) = t["services"]
    assert svc["auto_stop_machines"] == "suspend"
    assert svc["auto_start_machines"] is True
    assert svc["min_machines_running"] == 0
    assert svc["internal_port"] == int(env["PORT"])
    assert svc["concurrency"]["type"] == "connections"
    assert [c["path"] for c in svc["http_checks"]] == ["/healthz"]
    metrics_port = int(env["METRICS_PORT"])
    assert metrics_port == 9091
    assert t["metrics"] == {"port": metrics_port, "path": "/metrics"}
    exposed = {svc["internal_port"]} | {p["port"] for p in svc["ports"]}
    assert metrics_port not in exposed
    assert "http_service" not in t
    assert all("swap_size_mb" not in vm for vm in t.get("vm", []))


def test_connector_fly_toml_is_always_on_with_its_db_on_the_volume() -> None:
    t = _toml("connector")
    (svc,) = t["services"]
    assert svc["min_machines_running"] == 1
    assert svc["auto_stop_machines"] == "off"
    assert t["mounts"]["destination"] == "/data"
    sh, dash_c, script = shlex.split(t["processes"]["app"])
    assert (sh, dash_c) == ("sh", "-c")
    args = shlex.split(script)
    assert args[:3] == ["exec", "hermes-relay", "serve"]
    ns = relay_parser().parse_args(args[2:])
    assert ns.host == "::"  # dual stack: the proxy over IPv4, the metrics scraper over 6PN
    assert svc["internal_port"] == ns.port
    metrics_port = int(t["env"]["RELAY_METRICS_PORT"])
    assert t["metrics"] == {"port": metrics_port, "path": "/metrics"}
    assert metrics_port not in {svc["internal_port"]} | {p["port"] for p in svc["ports"]}


@pytest.mark.parametrize(
    ("relay_db", "db"),
    [(None, "/data/relay.db"), ("postgresql://u:p@db.internal:5432/relay?sslmode=disable", None)],
    ids=["volume-sqlite", "secret-postgres-url"],
)
def test_connector_fly_command_takes_its_db_from_the_relay_db_secret(
    relay_db: str | None, db: str | None
) -> None:
    """The connector's command uses the volume's SQLite file, or the RELAY_DB secret verbatim;
    either way it names the volume's file for ``--import-sqlite`` (a no-op when it is the store,
    the move to PostgreSQL when the secret is set)."""
    _sh, _c, script = shlex.split(_toml("connector")["processes"]["app"])
    echo = script.replace("exec hermes-relay serve", "printf '%s\\n'")
    env = {k: v for k, v in os.environ.items() if k != "RELAY_DB"}
    if relay_db is not None:
        env["RELAY_DB"] = relay_db
    out = subprocess.run(["sh", "-c", echo], env=env, capture_output=True, text=True, check=True)
    args = out.stdout.splitlines()
    assert args[args.index("--db") + 1] == (db or relay_db)
    assert args[args.index("--import-sqlite") + 1] == "/data/relay.db"


def test_sidecar_process_command_parses() -> None:
    args = shlex.split(_toml("sidecar")["processes"]["app"])
    assert args[0] == "hermes-sidecar"
    ns = sidecar_parser().parse_args(args[1:])
    assert (ns.command, ns.host) == ("run", "::")


def test_both_apps_build_from_the_shared_dockerfile_at_the_root() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for path in ("pyproject.toml", "common", "gateway", "relay"):
        assert re.search(rf"^COPY .*{path}", dockerfile, re.M), path
    for app in ("sidecar", "connector"):
        assert (DEPLOY / app / _toml(app)["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def _doc_commands() -> list[str]:
    """Our CLIs' command lines in the shell blocks of docs/deploy.md (continuations joined,
    also inside ``fly ssh console -C "..."``)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for cmd in re.findall(r"(hermes-(?:sidecar|relay) [^\"`]*)", line):
                out.append(" ".join(cmd.split()))
    return out


def test_the_walk_through_shows_our_commands() -> None:
    cmds = _doc_commands()
    assert any(c.startswith("hermes-relay telegram set-webhook --gateway gw1 --url") for c in cmds)
    assert "hermes-sidecar status" in cmds
    assert "hermes-sidecar reload" in cmds
    text = (ROOT / "docs" / "deploy.md").read_text()
    for needle in (
        "fly launch --no-deploy",
        "fly volumes create",
        "fly secrets set",
        "fly deploy --config deploy/sidecar/fly.toml --dockerfile deploy/Dockerfile",
        "fly deploy --config deploy/connector/fly.toml --dockerfile deploy/Dockerfile",
        "fly proxy 9091",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("cmd", _doc_commands(), ids=lambda cmd: " ".join(cmd.split()[:3]))
def test_documented_commands_parse(cmd: str) -> None:
    args = shlex.split(cmd.replace("<", "").replace(">", ""))
    parser = sidecar_parser() if args[0] == "hermes-sidecar" else relay_parser()
    parser.parse_args(args[1:])


def test_the_image_installs_the_fast_and_postgres_extras() -> None:
    """The image runs on uvloop (common/loop.py picks it when installed) and its connector can
    use PostgreSQL: the Dockerfile installs the ``fast`` and ``postgres`` extras, which are
    uvloop and asyncpg."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"^RUN pip install '\.\[([a-z,]+)\]'", dockerfile, re.M)
    assert match is not None
    assert set(match.group(1).split(",")) >= {"fast", "postgres"}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("uvloop") for dep in extras["fast"])
    assert any(dep.startswith("asyncpg") for dep in extras["postgres"])

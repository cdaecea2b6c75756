"""The system prompt of a profile's turns (SPEC 8.2).

``profiles.<name>.system_prompt`` in config.yaml, else ``$HERMES_HOME/profiles/<name>/SOUL.md``,
else ``$HERMES_HOME/SOUL.md``, else none. Files are read on every call (small; an edit applies
to the next turn without a restart).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.config import Config

log = logging.getLogger("gateway.conversation")

SOUL_FILE = "SOUL.md"


def system_prompt(config: Config, home: Path, profile: str | None) -> str | None:
    """The system prompt for ``profile`` (None means ``"default"``), whitespace-stripped.

    Order: ``config.profiles[profile].system_prompt``, ``home/profiles/<profile>/SOUL.md``,
    ``home/SOUL.md``. A source that is missing, unreadable (permissions, a folder, not UTF-8)
    or blank after stripping counts as absent and the next one is tried; None when all are
    absent. A profile name that is not a plain folder name (empty, ``.``, ``..``, holding a
    path separator) has no per-profile file: it never reads outside ``home/profiles``. Reads
    files synchronously (they are small); never raises.
    """
    name = profile or "default"
    p = config.profiles.get(name)
    if p is not None and p.system_prompt and p.system_prompt.strip():
        return p.system_prompt.strip()
    candidates = [home / SOUL_FILE]
    if _plain_name(name):
        candidates.insert(0, home / "profiles" / name / SOUL_FILE)
    for path in candidates:
        text = _read(path)
        if text:
            return text
    return None


def _plain_name(name: str) -> bool:
    return (
        bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name
    )


def _read(path: Path) -> str | None:
    """The stripped text of ``path``; None when it is missing, unreadable or blank."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("system prompt file %s is unreadable (%s); skipping it", path, exc)
        return None
    return text.strip() or None

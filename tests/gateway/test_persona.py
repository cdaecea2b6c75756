"""The system prompt (SPEC 8.2): the profile's config text, else its SOUL.md, else the home's
SOUL.md, else none; unreadable or blank sources count as absent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from gateway.config import Config, Profile
from gateway.conversation.persona import system_prompt


def config(home: Path, **prompts: str | None) -> Config:
    c = Config(home=home)
    c.profiles["default"] = Profile("default", None, None, prompts.pop("default", None))
    for name, text in prompts.items():
        c.profiles[name] = Profile(name, None, None, text)
    return c


def soul(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


@pytest.mark.parametrize(
    ("config_text", "profile_file", "home_file", "expected"),
    [
        ("from config", "from profile file", "from home file", "from config"),
        (None, "from profile file", "from home file", "from profile file"),
        (None, None, "from home file", "from home file"),
        (None, None, None, None),
        ("  \n ", "from profile file", None, "from profile file"),
        (None, "\n\t ", "from home file", "from home file"),
        (None, None, "   ", None),
        (None, "  padded \n\n", None, "padded"),
    ],
    ids=[
        "config-wins",
        "profile-file",
        "home-file",
        "none",
        "blank-config-skipped",
        "blank-profile-file-skipped",
        "blank-home-file-is-none",
        "stripped",
    ],
)
def test_system_prompt_precedence(
    tmp_path: Path,
    config_text: str | None,
    profile_file: str | None,
    home_file: str | None,
    expected: str | None,
) -> None:
    """Config text, then profiles/<name>/SOUL.md, then SOUL.md, then None."""
    if profile_file is not None:
        soul(tmp_path / "profiles" / "alpha" / "SOUL.md", profile_file)
    if home_file is not None:
        soul(tmp_path / "SOUL.md", home_file)
    assert system_prompt(config(tmp_path, alpha=config_text), tmp_path, "alpha") == expected


def test_system_prompt_none_profile_means_default(tmp_path: Path) -> None:
    """profile None reads the default profile's text and its SOUL.md."""
    soul(tmp_path / "profiles" / "default" / "SOUL.md", "default soul")
    assert system_prompt(config(tmp_path), tmp_path, None) == "default soul"
    assert system_prompt(config(tmp_path, default="configured"), tmp_path, None) == "configured"


def test_system_prompt_unknown_profile_still_reads_files(tmp_path: Path) -> None:
    """A profile missing from config.yaml can still have its SOUL.md, else the home's."""
    soul(tmp_path / "SOUL.md", "home")
    assert system_prompt(config(tmp_path), tmp_path, "ghost") == "home"
    soul(tmp_path / "profiles" / "ghost" / "SOUL.md", "ghost soul")
    assert system_prompt(config(tmp_path), tmp_path, "ghost") == "ghost soul"


def test_system_prompt_unreadable_file_counts_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SOUL.md that is a folder, not UTF-8 or not readable is skipped with a warning."""
    (tmp_path / "profiles" / "folder" / "SOUL.md").mkdir(parents=True)
    soul(tmp_path / "profiles" / "binary" / "SOUL.md", b"\xff\xfe\x00bad")
    soul(tmp_path / "SOUL.md", "home")
    with caplog.at_level(logging.WARNING, logger="gateway.conversation"):
        assert system_prompt(config(tmp_path), tmp_path, "folder") == "home"
        assert system_prompt(config(tmp_path), tmp_path, "binary") == "home"
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 2
    if os.geteuid() != 0:  # root reads files whatever their mode
        (tmp_path / "SOUL.md").chmod(0)
        assert system_prompt(config(tmp_path), tmp_path, "folder") is None


@pytest.mark.parametrize(
    "name", ["..", ".", "../outside", "a/b", "a\\b"], ids=["dotdot", "dot", "escape", "nested", "backslash"]
)
def test_system_prompt_profile_name_never_leaves_profiles_folder(tmp_path: Path, name: str) -> None:
    """A profile name that is not a plain folder name reads no per-profile file."""
    home = tmp_path / "home"
    soul(home / "outside" / "SOUL.md", "outside")  # what "../outside" would reach
    soul(home / "profiles" / "SOUL.md", "profiles folder")  # what "." would reach
    soul(home / "profiles" / "a" / "b" / "SOUL.md", "nested")
    soul(home / "profiles" / "a\\b" / "SOUL.md", "backslash")  # a plain name on POSIX, refused anyway
    soul(home / "SOUL.md", "home")
    assert system_prompt(config(home), home, name) == "home"

"""Conversations (SPEC 8.2): sessions per chat, the history a turn sends, its system prompt.

``history`` and ``reset`` are pure (values and ``now`` in, decisions out); ``persona`` reads the
``SOUL.md`` files; ``store`` keeps sessions and their messages in state.db (migration 7).
"""

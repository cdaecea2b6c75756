"""``$HERMES_HOME/state.db``: one SQLite file (WAL), one ``schema_version``, ordered migrations.

Each subsystem owns its tables but adds its migration here, in order, so every database
reaches the same shape. The inbox connection runs ``synchronous=FULL``: an ``inbound_ack``
is only sent after a commit that survives power loss (PROTOCOL.md 5.5).
"""

from __future__ import annotations

import secrets
from pathlib import Path

import aiosqlite

from common.sqlite import migrate, open_db, read_one, write_tx

MIGRATIONS = [
    # 1: inbox
    """
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        buffer_id TEXT UNIQUE,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL DEFAULT '',
        chat_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        profile TEXT,
        event TEXT NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        started_at REAL,
        finished_at REAL,
        error TEXT,
        UNIQUE (platform, chat_id, message_id)
    );
    CREATE INDEX inbox_pending ON inbox (status, id);
    """,
    # 2: cron jobs, the run ledger, drift episodes, budget alerts, queued deliveries
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT,
        prompt TEXT NOT NULL,
        schedule TEXT NOT NULL,
        tz TEXT NOT NULL,
        profile TEXT,
        model TEXT,
        provider TEXT,
        provider_snapshot TEXT,
        model_snapshot TEXT,
        skills TEXT NOT NULL DEFAULT '[]',
        deliver_to TEXT,
        catch_up TEXT NOT NULL DEFAULT 'latest',
        misfire_grace_seconds REAL,
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at REAL NOT NULL,
        next_run_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        scheduled_for REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        lease_until REAL,
        owner TEXT,
        status TEXT NOT NULL,
        error TEXT,
        model TEXT,
        provider TEXT,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd REAL,
        routing_reason TEXT,
        output TEXT,
        UNIQUE (job_id, scheduled_for)
    );
    CREATE INDEX job_runs_status ON job_runs (status, job_id);
    CREATE INDEX job_runs_started ON job_runs (started_at);
    CREATE TABLE drift_episodes (
        job_id TEXT PRIMARY KEY,
        opened_at REAL NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE budget_alerts (day TEXT PRIMARY KEY, at REAL NOT NULL);
    CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        platform TEXT NOT NULL,
        chat_id TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    """,
    # 3: the scheduler asks for due jobs and the earliest next run through an index
    """
    CREATE INDEX jobs_due ON jobs (enabled, next_run_at);
    """,
    # 4: skill telemetry; a daily rollup kept by a trigger so the view and the EMA never scan
    # the raw rows (rows from any writer count: the trigger sees every insert)
    """
    CREATE TABLE skill_invocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER,
        cron_id TEXT,
        skill_name TEXT NOT NULL,
        skill_version TEXT,
        invoked_at REAL NOT NULL,
        completed_at REAL,
        model TEXT,
        provider TEXT,
        duration_seconds REAL,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cache_read_tokens INTEGER,
        cache_write_tokens INTEGER,
        estimated_cost_usd REAL,
        success INTEGER,
        end_reason TEXT,
        quality_score REAL
    );
    CREATE INDEX skill_invocations_skill ON skill_invocations (skill_name, invoked_at);
    CREATE INDEX skill_invocations_cron ON skill_invocations (cron_id, invoked_at);
    CREATE TABLE skill_stats_rollup (
        day TEXT NOT NULL,
        skill_name TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        invocations INTEGER NOT NULL DEFAULT 0,
        successes INTEGER NOT NULL DEFAULT 0,
        failures INTEGER NOT NULL DEFAULT 0,
        total_duration_s REAL NOT NULL DEFAULT 0,
        total_cost_usd REAL NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        last_invoked_at REAL,
        PRIMARY KEY (day, skill_name, model, provider)
    );
    CREATE TRIGGER skill_invocations_rollup AFTER INSERT ON skill_invocations
    BEGIN
        INSERT OR IGNORE INTO skill_stats_rollup (day, skill_name, model, provider)
        VALUES (date(NEW.invoked_at, 'unixepoch'), NEW.skill_name, COALESCE(NEW.model, ''),
                COALESCE(NEW.provider, ''));
        UPDATE skill_stats_rollup SET
            invocations = invocations + 1,
            successes = successes + (CASE WHEN NEW.success = 1 THEN 1 ELSE 0 END),
            failures = failures + (CASE WHEN NEW.success = 0 THEN 1 ELSE 0 END),
            total_duration_s = total_duration_s + COALESCE(NEW.duration_seconds, 0),
            total_cost_usd = total_cost_usd + COALESCE(NEW.estimated_cost_usd, 0),
            input_tokens = input_tokens + COALESCE(NEW.input_tokens, 0),
            output_tokens = output_tokens + COALESCE(NEW.output_tokens, 0),
            last_invoked_at = MAX(COALESCE(last_invoked_at, 0), NEW.invoked_at)
        WHERE day = date(NEW.invoked_at, 'unixepoch') AND skill_name = NEW.skill_name
          AND model = COALESCE(NEW.model, '') AND provider = COALESCE(NEW.provider, '');
    END;
    DROP VIEW IF EXISTS skill_stats_daily;
    CREATE VIEW skill_stats_daily AS
        SELECT day, skill_name, model, provider, invocations, successes, failures,
               total_duration_s, total_duration_s / invocations AS avg_duration_s,
               total_cost_usd, total_cost_usd / invocations AS avg_cost_usd,
               input_tokens, output_tokens, last_invoked_at
        FROM skill_stats_rollup;
    """,
    # 5: the dispatch board. Every agent turn is a task; (source, ref) links a task to its
    # inbox row or cron occurrence, unique so a restart never makes a second task for one.
    """
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        title TEXT NOT NULL,
        body TEXT NOT NULL DEFAULT '',
        assignee TEXT,
        status TEXT NOT NULL DEFAULT 'ready'
            CHECK (status IN ('todo', 'ready', 'running', 'done', 'failed', 'blocked')),
        priority INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        claim_lock TEXT,
        claim_expires_at REAL,
        source TEXT NOT NULL DEFAULT 'manual' CHECK (source IN ('inbound', 'cron', 'manual')),
        ref TEXT,
        result TEXT,
        error TEXT
    );
    CREATE INDEX tasks_ready ON tasks (status, priority DESC, created_at, id);
    CREATE UNIQUE INDEX tasks_ref ON tasks (source, ref) WHERE ref IS NOT NULL;
    CREATE TABLE task_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        task_id INTEGER NOT NULL REFERENCES tasks (id),
        kind TEXT NOT NULL,
        payload TEXT NOT NULL DEFAULT '{}',
        at REAL NOT NULL
    );
    CREATE INDEX task_events_task ON task_events (task_id, id);
    """,
    # 6: exactly-once turns (SPEC 8.1). An inbound turn's durable step (gateway/core/turn.py):
    # the full answer split into chunks is committed before the first send, and every
    # confirmed chunk is counted, so a restart sends only what was not confirmed. Rows that can
    # never be handled are kept with status 'rejected' (quarantine) and their error.
    """
    ALTER TABLE inbox ADD COLUMN turn_state TEXT NOT NULL DEFAULT 'received';
    ALTER TABLE inbox ADD COLUMN chunks TEXT;
    ALTER TABLE inbox ADD COLUMN chunks_sent INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN outcome TEXT;
    ALTER TABLE inbox ADD COLUMN model_calls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE inbox ADD COLUMN answered_at REAL;
    UPDATE inbox SET turn_state = 'delivered' WHERE status = 'done';
    UPDATE inbox SET turn_state = 'undelivered' WHERE status = 'failed';
    """,
    # 7: conversations (SPEC 8.2, gateway/conversation/store.py). A chat's open session is
    # its row with ended_at NULL; a message is unique per (inbox row, role), so a replayed turn
    # never stores its question or answer twice. thread_id is '' when the chat has none.
    """
    CREATE TABLE sessions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        platform TEXT NOT NULL,
        bot_id TEXT NOT NULL DEFAULT '',
        chat_id TEXT NOT NULL,
        thread_id TEXT NOT NULL DEFAULT '',
        hermes_session_id TEXT,
        created_at REAL NOT NULL,
        last_at REAL NOT NULL,
        ended_at REAL
    );
    CREATE INDEX sessions_key ON sessions (platform, bot_id, chat_id, thread_id, ended_at);
    CREATE TABLE session_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id INTEGER NOT NULL REFERENCES sessions (id),
        inbox_id INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        at REAL NOT NULL,
        tokens INTEGER NOT NULL,
        UNIQUE (inbox_id, role)
    );
    CREATE INDEX session_messages_session ON session_messages (session_id, inbox_id);
    CREATE INDEX session_messages_at ON session_messages (at);
    """,
    # 8: spend and substitution across all turns (SPEC 8.2). An inbound turn records what it
    # asked, what answered and what it cost; a cron run records the answering model too.
    """
    ALTER TABLE inbox ADD COLUMN model TEXT;
    ALTER TABLE inbox ADD COLUMN provider TEXT;
    ALTER TABLE inbox ADD COLUMN input_tokens INTEGER;
    ALTER TABLE inbox ADD COLUMN output_tokens INTEGER;
    ALTER TABLE inbox ADD COLUMN cost_usd REAL;
    ALTER TABLE inbox ADD COLUMN answered_model TEXT;
    CREATE INDEX inbox_answered ON inbox (answered_at);
    ALTER TABLE job_runs ADD COLUMN answered_model TEXT;
    CREATE TABLE substitution_episodes (
        asked TEXT PRIMARY KEY,
        answered TEXT NOT NULL,
        provider TEXT,
        opened_at REAL NOT NULL,
        last_at REAL NOT NULL,
        turns INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE agent_budget_alerts (day TEXT PRIMARY KEY, at REAL NOT NULL);
    """,
    # 9: the operator page's history (SPEC 8.5, gateway/ops/history.py): watcher and relay
    # transitions and wakes with their latency, pruned after gateway.history_retention_days;
    # job_runs by finish time for hermes_cron_runs_total.
    """
    CREATE TABLE state_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('watcher', 'relay')),
        from_state TEXT NOT NULL,
        to_state TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX state_history_kind_at ON state_history (kind, at);
    CREATE INDEX state_history_at ON state_history (at);
    CREATE TABLE wake_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        trigger TEXT NOT NULL,
        latency_ms REAL,
        ended_by TEXT NOT NULL
    );
    CREATE INDEX wake_history_at ON wake_history (at);
    CREATE INDEX job_runs_finished ON job_runs (finished_at);
    """,
    # 10: the spend index holds answered rows only: an admission (answered_at NULL) no longer
    # writes it (issue #16). Every reader filters on answered_at >= ?, which SQLite takes as
    # implying the index's NOT NULL.
    """
    DROP INDEX inbox_answered;
    CREATE INDEX inbox_answered ON inbox (answered_at) WHERE answered_at IS NOT NULL;
    """,
]


async def open_state_db(path: Path, *, synchronous: str = "FULL") -> aiosqlite.Connection:
    """Open state.db (creating ``$HERMES_HOME``), migrated to the current schema."""
    db = await open_db(str(path), synchronous=synchronous)
    await migrate(db, MIGRATIONS)
    await _seed_inbox_ids(db)
    return db


async def _seed_inbox_ids(db: aiosqlite.Connection) -> None:
    """Start a new state.db's inbox ids at a random offset (1 .. 2**40).

    Reply idempotency keys are ``inbox:<id>:<chunk>`` and a connector remembers them for days:
    a state.db that is lost and recreated must not reuse the ids of the old one, or its new
    replies would be answered as duplicates and never reach the chat. Ids stay increasing
    (AUTOINCREMENT), so keys remain stable across restarts of the same state.db.
    """
    if await read_one(db, "SELECT seq FROM sqlite_sequence WHERE name = 'inbox'") is not None:
        return
    async with write_tx(db):
        row = await read_one(db, "SELECT COUNT(*) FROM inbox")
        if row is not None and row[0] == 0:
            await db.execute(
                "INSERT INTO sqlite_sequence (name, seq) SELECT 'inbox', ? WHERE NOT"
                " EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'inbox')",
                (secrets.randbelow(2**40) + 1,),
            )

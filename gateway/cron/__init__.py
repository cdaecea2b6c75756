"""Cron: schedules (pure), the jobs store and ledger, the scheduler, the drift guard, cron turns."""

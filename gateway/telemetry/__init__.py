"""Skill telemetry (invocations, daily rollup, EMA) and time-aware model routing."""

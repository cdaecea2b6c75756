"""Deterministic simulation of the whole loop under seeded fault schedules (SPEC 8.4).

``python -m sim --seeds N`` (see ``sim/__main__.py``); not shipped in the wheel.
"""

"""Async shells around the pure cores, and the composition root (``Sidecar``)."""

"""Relay wire protocol (pure core), the gateway-side client transport and the reference connector.

See PROTOCOL.md: the gateway dials out to a connector over a WebSocket carrying NDJSON frames.
"""

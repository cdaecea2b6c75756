"""The reference connector: durable per-gateway buffer, WS ``/relay``, ingress, outbox, pokes."""

"""The sidecar's HTTP surface: /wake, /healthz, /status, /metrics, /presence (SPEC section 2)."""

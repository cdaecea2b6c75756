"""The sidecar's HTTP surface: /wake, /healthz, /status, /presence and /admin/* on the app port,
/metrics on the internal port (SPEC sections 2 and 8.3)."""

"""``python -m gateway`` is ``hermes-sidecar``."""

from gateway.cli import main

raise SystemExit(main())

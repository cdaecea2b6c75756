"""``python -m relay`` is ``hermes-relay``."""

from relay.cli import main

raise SystemExit(main())

"""hermes-sidecar: the scale-to-zero sidecar for an agent's messaging gateway."""

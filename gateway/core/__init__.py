"""Pure cores of the sidecar: scale-to-zero policy, activity, watcher state table, resume check."""

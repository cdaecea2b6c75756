"""What the gateway and the relay share: the exception tree, the injected clock, SQLite plumbing,
start-up checks (bind, state folder) and RFC 3339 time formatting. Imports only the stdlib and
aiosqlite; never ``gateway`` or ``relay``."""

"""The relay protocol as pure functions: dial URL, upgrade token, NDJSON framing, frame shapes.

No asyncio, no I/O: values in, values out (PROTOCOL.md sections 1-4).
"""

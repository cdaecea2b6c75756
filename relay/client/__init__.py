"""Gateway-side relay client: pure reconnect policy and state table, and the aiohttp transport."""

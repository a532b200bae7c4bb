"""The HTTP communications interface (aiohttp)."""

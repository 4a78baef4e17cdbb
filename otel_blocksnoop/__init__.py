"""Watch asyncio event loops in other Python processes and report every block."""

__version__ = "0.1.0"

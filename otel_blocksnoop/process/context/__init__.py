"""What the app is running: its interpreter, objects, active OpenTelemetry span and asyncio task."""

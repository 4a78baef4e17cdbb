"""Where blocks go: console, JSON lines, OpenTelemetry (spans, metrics, logs over OTLP)."""

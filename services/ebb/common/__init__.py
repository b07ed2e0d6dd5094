"""The small core every Ebb service shares: gRPC server with health and reflection, settings, logs, shutdown."""

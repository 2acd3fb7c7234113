"""Scenes: telemetry into detections (manhole, lighting, clean roads, device health)."""

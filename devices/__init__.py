"""Devices: the device registry and the asset dictionary (component codes, owners)."""

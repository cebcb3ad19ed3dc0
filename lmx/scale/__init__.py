"""Meshes, sharding rules, multi-host input, ahead-of-time checks."""

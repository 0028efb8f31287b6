"""Hostile tier: fuzzing, lossy paths, floods, restarts, scale."""

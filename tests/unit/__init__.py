"""Unit tier: Python only, no root."""

"""Unit tests: pure modules only, no API server."""

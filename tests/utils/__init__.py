"""Helpers that several test modules use, a module per topic (fixtures are in tests/conftest.py)."""

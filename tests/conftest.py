"""Test-wide setup: ``tests/`` on the import path for ``twins`` and ``guests``."""

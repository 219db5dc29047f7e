"""The Prometheus fixture lives in tests/conftest.py (shared with the e2e tier)."""

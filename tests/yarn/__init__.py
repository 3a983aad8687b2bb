"""Tests on the real dev YARN (one per session, see conftest.py)."""

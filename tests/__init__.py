"""Refit's test suite: unit tests (make test-fast) and the slow ones on real servers and weights."""

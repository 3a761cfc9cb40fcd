"""Refit serving: the BentoML service in front of registered models (built in the serving issue)."""

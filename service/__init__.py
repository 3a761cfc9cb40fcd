"""Refit serving: the BentoML service that answers with the production version of a registered model."""

"""Refit monitoring: drift checks of live traffic against the training data, gauges, and gated retraining."""

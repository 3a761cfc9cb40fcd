"""Refit monitoring: drift checks, gauges and re-fine-tuning (built in the monitoring issue)."""

"""The Refit demo: generated support tickets driving the whole loop on loopback, and its load generator."""

"""Refit docs tooling: the README's generated reference sections and the screenshots."""

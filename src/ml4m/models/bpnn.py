"""Behler-Parrinello networks (being written)."""

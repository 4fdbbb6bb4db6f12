"""Equivariant message-passing networks (being written)."""

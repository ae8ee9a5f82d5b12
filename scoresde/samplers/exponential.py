"""Samplers: exponential family (being written)."""

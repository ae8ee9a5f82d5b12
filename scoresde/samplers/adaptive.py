"""Samplers: adaptive family (being written)."""

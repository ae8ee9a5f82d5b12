"""Samplers: langevin family (being written)."""

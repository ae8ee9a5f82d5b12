"""Samplers: ode family (being written)."""

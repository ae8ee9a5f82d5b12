"""Samplers: karras family (being written)."""

"""Strategies: the interface (``strategies.base``) and the built-ins."""

"""Marks this metric directory as package data so setuptools ships fidelity.py (loaded by path, not imported)."""

"""Marks this metric directory as package data so setuptools ships accuracy.py (loaded by path, not imported)."""

"""Marks this metric directory as package data so setuptools ships exact_match.py (loaded by path, not imported)."""

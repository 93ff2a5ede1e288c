"""Reliability campaigns: ``make reliability`` runs them all; a seeded subset of each runs in ``make test``."""

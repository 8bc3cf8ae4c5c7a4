"""Prefect flows: thin wrappers that call pipeline functions, one per stage."""

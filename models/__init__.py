"""Torch modules only (no I/O): SFNO, Spherical DYffusion, and their registry."""

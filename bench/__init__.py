"""Distributary's own benchmarks (not timed tests): `python -m bench.<name>`."""

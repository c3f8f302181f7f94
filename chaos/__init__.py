"""The chaos run: the whole service under seeded faults, every reader checked for exactness.

``python -m chaos --seed N --duration D`` (see :mod:`chaos.__main__`); what it does
and what it checks is in docs/reliability.md.
"""

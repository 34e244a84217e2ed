"""Expert models sharing one interface (base.py)."""

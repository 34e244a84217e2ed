"""Dash UI and REST API."""

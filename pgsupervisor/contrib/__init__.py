"""Integrations: Flask, Django, Prometheus."""

"""Celery task definitions: thin adapters from a message to a service. Torch-free at import."""

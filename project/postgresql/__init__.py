"""Django's PostgreSQL backend, health-checking a kept connection only once it has sat unused (base.py)."""

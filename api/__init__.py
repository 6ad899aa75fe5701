"""The InferQ Django app: jobs, their REST API, admin and management commands."""

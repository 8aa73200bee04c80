"""Prefect flows of the pipelines, and the life of a run they share."""

"""Experiment config files (ml_collections), loaded by file path; installed as jaxdml.experiments."""

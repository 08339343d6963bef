"""Dagster assets, one module per lifecycle stage."""

"""Datasets: the procedural inspection demo set."""

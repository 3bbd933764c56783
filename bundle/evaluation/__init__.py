"""Evaluation: per-image mask and instance scores."""

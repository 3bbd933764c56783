"""Data lists, transforms and training targets."""

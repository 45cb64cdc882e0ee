"""Structured and unstructured pruning: importance scores, what to keep, magnitude masks."""

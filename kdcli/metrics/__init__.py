"""Evaluation metrics: fidelity to the teacher (and, later, CKA)."""

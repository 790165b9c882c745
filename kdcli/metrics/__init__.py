"""Evaluation metrics: fidelity to the teacher, and CKA feature alignment."""

"""Aggregation of run directories into paired comparisons (PI vs κ)."""

"""The shared training loop and what it needs (optimiser, schedule, device, state)."""

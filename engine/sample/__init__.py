"""Sampling: logits -> next tokens (logits processors, penalties, temperature, top-k/top-p/min-p)."""

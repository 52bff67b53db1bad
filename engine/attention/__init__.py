"""Attention over the paged KV cache: the backend interface, the torch and Triton backends."""

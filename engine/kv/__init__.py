"""The hybrid KV cache: block pool (hashing, LRU of evictable blocks), global and ring pools, sizing."""

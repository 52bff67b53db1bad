"""Tensor parallelism: sharded layers, the process group, the step channel, and worker processes."""

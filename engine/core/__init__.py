"""The request path: LLMEngine and AsyncEngine, the scheduler, sequences, outputs and sampling params."""

"""Per-request modes: reasoning and its budget, tool-call parsing, guided decoding, chat templates."""

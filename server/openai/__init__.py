"""The OpenAI surface: chat, completions and Responses handlers, their msgspec schemas, SSE streaming."""

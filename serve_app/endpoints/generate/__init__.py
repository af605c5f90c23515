"""``POST /v1/generate``: NeuroAPI's own request shape (a prompt, a message_history, a mode)."""

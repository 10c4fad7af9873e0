"""Who may use the service: hashed API keys and users, scopes, rate limits (no web framework)."""

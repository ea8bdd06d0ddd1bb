"""Who may use the server: admin users, sessions, API tokens, CSRF, rate limits, the audit log,
and callers' signed identity."""

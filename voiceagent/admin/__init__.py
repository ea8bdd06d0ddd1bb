"""The operators' dashboard: pages under /admin, its JSON API, and live updates from every node."""

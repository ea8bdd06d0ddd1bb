"""Proactive outreach: intents read from what callers said, decisions, and the prompts they become.

Depends on the core (pipeline, store, events); nothing in the core depends on it.
"""

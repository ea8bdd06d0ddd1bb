"""Calls: a live call ties a transport, a conversation, the page and the store together."""

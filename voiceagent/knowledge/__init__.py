"""The knowledge base the agent answers from: documents chunked, embedded and kept in a hybrid
(vector + BM25) index. Depends on the core (engines, text); nothing in the core depends on it."""

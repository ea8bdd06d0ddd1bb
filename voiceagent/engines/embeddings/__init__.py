"""embeddings engines."""

"""Engines: VAD, ASR, LLM, TTS and embeddings behind one base class per kind."""

"""Where documents come from: each source turns its changes into submissions (submissions.py)."""

"""The conversation pipeline: turn-taking, the agent, barge-in, playout — one per call."""

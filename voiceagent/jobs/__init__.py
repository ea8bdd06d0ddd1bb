"""Slow inference as asynchronous jobs: submitted over HTTP, queued on RocketMQ (or the store for
the embedded default), run by `voiceagent worker` processes, results kept for a while."""

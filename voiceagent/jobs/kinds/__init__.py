"""Job kinds: one module each, behind :class:`voiceagent.jobs.kinds.base.JobKind`."""

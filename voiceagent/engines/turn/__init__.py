"""Audio end-of-turn models: did the caller finish, judged from how the last seconds sound."""

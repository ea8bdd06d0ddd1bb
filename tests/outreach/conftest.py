# The calls layer with fake engines, as the calls tests use it (fixtures re-exported, not copied).
from tests.calls.conftest import manager, metrics, store

__all__ = ["manager", "metrics", "store"]

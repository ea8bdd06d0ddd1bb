"""The admin tests drive the real app with fake engines (the browser tests' fixture)."""

from tests.e2e.conftest import fake_server, launch_browser

__all__ = ["fake_server", "launch_browser"]

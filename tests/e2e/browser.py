"""How to start Debian's Chromium for a call with a wav file as its microphone (tests and bench)."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def chromium_args(mic_wav: Path) -> list[str]:
    """Headless flags that work on a machine with no network but loopback: no background
    networking or DNS, loopback ICE allowed, the fake mic plays ``mic_wav`` once."""
    return [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={mic_wav}%noloop",
        "--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ]  # fmt: skip

"""Pipecat's Smart Turn v3 end-of-turn model (ONNX, ~8.7 MB int8, BSD-2), run on the CPU.

The model file ships inside the ``pipecat-ai`` wheel, installed ``--no-deps`` only to carry it:
``pip install --no-deps pipecat-ai==1.14.0``. Nothing of pipecat is imported (its package
imports loguru and more at import time); the file is found through the wheel's metadata. The
features are our own numpy code (features.py), identical to Pipecat's vendored Whisper front end.

Input: the turn so far as 16 kHz int16 PCM, ending now, i.e. the speech plus the silence since
it stopped (Pipecat asks after 0.2 s; 0.05-0.2 s scored alike in bench/turn_model.py, 0.5 s
worse). Only the last 8 s count.
"""

from __future__ import annotations

import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from voiceagent.engines.audio import pcm16_to_float
from voiceagent.engines.base import PCM_RATE, ModelUnavailable
from voiceagent.engines.turn.features import last_window, log_mel

log = logging.getLogger(__name__)

DISTRIBUTION = "pipecat-ai"
MODEL_IN_WHEEL = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
DEFAULT_THRESHOLD = 0.5  # Pipecat's: complete when the probability is above one half


def packaged_model_path() -> Path:
    """The ONNX file of the installed ``pipecat-ai`` wheel, or ModelUnavailable saying why not."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"Smart Turn needs the {DISTRIBUTION} wheel for its model file: "
            f"pip install --no-deps {DISTRIBUTION}==1.14.0"
        ) from exc
    path = Path(str(dist.locate_file(MODEL_IN_WHEEL)))
    if not path.is_file():
        raise ModelUnavailable(f"{DISTRIBUTION} {dist.version} has no {MODEL_IN_WHEEL}")
    return path


class SmartTurn:
    """Loads once (~0.05-0.25 s, ~25 MB; ~55 MB once run). ``probability`` costs ~60 ms of CPU
    (8 ms of it our features) with one thread on this 2-core EPYC and blocks, so async callers
    run it via ``asyncio.to_thread``. One thread is the right setting here: two were slower
    whenever Whisper or anything else was busy. Thread-safe: ONNX Runtime sessions allow
    concurrent ``run`` calls."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = 1,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        import onnxruntime

        path = Path(model_path) if model_path is not None else packaged_model_path()
        if not path.is_file():
            raise ModelUnavailable(f"Smart Turn model file missing: {path}")
        started = time.perf_counter()
        options = onnxruntime.SessionOptions()
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: Any = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several kinds for a corrupt file
            raise ModelUnavailable(f"Smart Turn model {path} does not load: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        self.threshold = threshold
        self.model_path = path
        self.load_s = time.perf_counter() - started
        log.info("Smart Turn loaded from %s in %.2f s (%d thread(s))", path, self.load_s, threads)

    def features(self, pcm16_16k: bytes) -> np.ndarray:
        """(1, 80, 800) model input for the turn so far."""
        samples = pcm16_to_float(pcm16_16k, PCM_RATE)
        return log_mel(last_window(samples))[None]

    def probability(self, pcm16_16k: bytes) -> float:
        (output,) = self._session.run(None, {self._input: self.features(pcm16_16k)})
        return float(np.asarray(output).reshape(-1)[0])

    def complete(self, pcm16_16k: bytes) -> bool:
        return self.probability(pcm16_16k) >= self.threshold

    def close(self) -> None:
        self._session = None

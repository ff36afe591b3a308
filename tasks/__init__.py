"""Audio tasks as prompted token tasks (ASR, TTS, voice cloning, separation, captioning, music continuation)."""

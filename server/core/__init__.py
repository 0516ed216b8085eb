"""The core: audio, transcript dataclasses, window planning, VAD, response formats. numpy, PyAV and the standard library only (silero-vad loaded lazily); imports nothing else of Chorus."""

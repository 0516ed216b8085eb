"""Chorus HTTP servers: the whisper server, the router, and the pieces they share."""

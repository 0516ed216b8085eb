"""The HTTP kit every Chorus server shares: settings, OpenAI-shaped errors, request models, uploads, the app builder (auth, admission, health, readiness, metrics). Imports server.core only."""

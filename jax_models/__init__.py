"""The JAX side of Chorus: Whisper checkpoints (CTranslate2 import) and the EasyDeL engine."""

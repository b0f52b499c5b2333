"""Whisper in JAX: CTranslate2 weights read natively, encoder embeddings, transcription."""

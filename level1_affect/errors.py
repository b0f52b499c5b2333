"""Errors raised by level-1 extraction."""


class MediaError(ValueError):
    """A media file (video, audio, transcript, model file) is missing, corrupt or unreadable.

    The message always starts with the offending file's path, so a batch job's log says
    which input to look at: ``raise MediaError(f"{path}: no video stream")``.
    """

"""The project's exception family: every message says what was wrong and what to do."""


class EvadError(Exception):
    """Base class of every error evad-deploy raises on purpose; CLIs print it as one line."""


class ConfigError(EvadError, ValueError):
    """An argument or preset field is out of range (keep rate, input size, ...)."""


class CheckpointError(EvadError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


class VideoError(EvadError):
    """A video (or frame directory) is missing, empty, corrupt, or in a codec OpenCV cannot
    decode."""


class BackendError(EvadError):
    """An inference backend is unavailable, or its model does not fit the input."""

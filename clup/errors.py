"""Errors meant for users: the command line prints their message, not a traceback."""


class ClupError(Exception):
    """Base of every error whose message alone tells the user what to fix."""


class ConfigError(ClupError, ValueError):
    """A configuration value that cannot be accepted; the message names the key."""


class ManifestError(ClupError, ValueError):
    """A dataset file that cannot be read; the message names the file and line."""


class CheckpointError(ClupError, ValueError):
    """A checkpoint that is missing, unreadable or does not match the model."""


class MissingPackage(ClupError):
    """An optional package a feature needs is not installed; the message says how to add it."""


class StageFailed(ClupError):
    """A pipeline stage exited with an error; the message names the stage and its log."""


class SlurmError(ClupError):
    """`sbatch` or `squeue` is missing or refused a job; the message says what SLURM said."""

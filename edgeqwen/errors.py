"""Exceptions that carry an exit code, so the CLI and scripts agree on what failed."""

from __future__ import annotations


class EdgeQwenError(Exception):
    """A problem the user can fix (bad input, missing file, no network...).

    The message names the problem; `hint` says what to do about it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class RecipeError(EdgeQwenError):
    """A recipe file that does not parse or does not match the schema."""


class SourceError(EdgeQwenError):
    """A model source that cannot be resolved to a usable checkpoint."""


class ArtifactError(EdgeQwenError):
    """An artifact folder that is missing, incomplete, or was modified."""


class RegistryError(EdgeQwenError):
    """An engine or runtime name that no installed plugin provides."""


class ResourceError(EdgeQwenError):
    """Not enough disk or memory for a step; raised before the step starts."""


class GateFailed(EdgeQwenError):
    """Validation ran and the artifact fell below the recipe's quality gates."""

    exit_code = 2


class EngineError(EdgeQwenError):
    """The external tool behind an engine failed; the message carries its last output lines."""

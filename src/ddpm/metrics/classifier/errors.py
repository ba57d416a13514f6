"""The evaluation classifier's typed errors.

What the library raises when a classifier cannot be built, trained, loaded or applied as asked. Each message is
one line that says what is wrong, in the library's terms (function arguments, files); the command lines
(``ddpm classifier``, ``python -m ddpm.metrics.classifier``) map them to their own lines, flags and hints.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ClassifierDivergedError", "ClassifierError", "ClassifierNotFoundError"]


class ClassifierError(ValueError):
    """A classifier cannot be built, trained, loaded or applied as asked: files missing, corrupt or not
    matching, a bad setting, images it cannot score. A ``ValueError``; the message is one line a user can act on.
    """


class ClassifierNotFoundError(ClassifierError):
    """No classifier files where one was looked for.

    Attributes:
        directory: the directory that lacks ``classifier.json`` / ``model.safetensors``.
        dataset: the dataset whose default classifier was asked for (:func:`load_default_classifier`), or None.
    """

    def __init__(self, message: str, directory: Path | None = None, dataset: str | None = None) -> None:
        super().__init__(message)
        self.directory, self.dataset = directory, dataset


class ClassifierDivergedError(ClassifierError, FloatingPointError):
    """Training produced a non-finite loss (the learning rate is too high for the data).

    Also a ``FloatingPointError``, the type this error had before it was a :class:`ClassifierError`.
    """

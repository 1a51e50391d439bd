"""The error a request earns by its own content, carrying the field at fault.

The server answers it with a 400 in OpenAI's shape, whose ``param`` is this error's ``param``
(server/errors.py): the field travels with the error, from ``SamplingParams.validate``, the
engine's admission checks (across the engine-core process boundary as ``Admission.param``) or the
server's own request checks, instead of being read back out of the message's wording.
"""

from __future__ import annotations


class RequestValidationError(ValueError):
    """A request refused for what it asks; ``param`` names the request field at fault (None: the
    request as a whole, e.g. one too long for the context)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, for every failure.

A request refused for its content is a 400 whose ``param`` is the field a RequestValidationError
carries (engine/request_errors.py); any other ValueError from a request check is a 400 naming no
field. Clients never see a stack trace: unexpected exceptions are logged here and answered with
a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, SerializationException, ValidationException

from engine.request_errors import RequestValidationError
from server.responses import ErrorInfo, ErrorResponse

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.headers = headers


class ClientDisconnected(APIError):
    def __init__(self) -> None:
        super().__init__(499, "The client closed the connection before the response was ready.")


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


def from_value_error(err: ValueError) -> APIError:
    """A refused request's 400; ``param`` is the field a RequestValidationError names."""
    return APIError(400, str(err), err.param if isinstance(err, RequestValidationError) else None)


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> Response[ErrorResponse]:
    body = ErrorResponse(error=ErrorInfo(message=message, type=ERROR_TYPES.get(status, "Error"),
                                         param=param, code=status))
    return Response(body, status_code=status, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: APIError) -> Response[ErrorResponse]:
    return error_response(exc.status, exc.message, exc.param, exc.headers)


def _invalid_request(_: Request[Any, Any, Any], exc: RequestValidationError) -> Response[ErrorResponse]:
    return error_response(400, str(exc), exc.param)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorResponse]:
    # Litestar reports body validation problems as a list of {"message", "key"} dicts.
    details = exc.extra if isinstance(exc.extra, list) else []
    parts, param = [], None
    for item in details:
        if isinstance(item, dict):
            key = item.get("key")
            param = param or key
            parts.append(f"{item.get('message')}" + (f" (field `{key}`)" if key else ""))
    message = "; ".join(parts) if parts else str(exc.detail)
    return error_response(400, f"Invalid request: {message}", param)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    message = str(exc.detail)
    if isinstance(exc.__cause__, SerializationException):
        message = f"The request body is not valid JSON: {message}"
    return error_response(exc.status_code, message, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    logger.exception("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "Internal server error")


EXCEPTION_HANDLERS = {
    APIError: _api_error,
    RequestValidationError: _invalid_request,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}

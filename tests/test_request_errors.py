"""Errors by type: the field at fault travels with a RequestValidationError (through the engine
core's Admission too) and becomes the 400's ``param``; nothing reads it out of the message."""

from __future__ import annotations

import msgspec
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from engine.core.messages import Admission
from engine.request_errors import RequestValidationError
from engine.sampling_params import SamplingParams
from engine.structured_output.spec import StructuredOutputError
from server.errors import EXCEPTION_HANDLERS, from_value_error
from server.tool_parsers.tools import ToolError


@pytest.mark.parametrize(("fields", "param"), [
    ({"top_k": 2**40}, "top_k"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"stop": [""]}, "stop"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
])
def test_sampling_params_name_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(RequestValidationError) as err:
        SamplingParams(**fields)  # type: ignore[arg-type]
    assert err.value.param == param


def test_the_param_comes_from_the_type_not_the_wording() -> None:
    typed = from_value_error(RequestValidationError("This sentence names no field", "n"))
    assert (typed.status, typed.param, typed.message) == (400, "n", "This sentence names no field")
    untyped = from_value_error(ValueError("prompt is what this message starts with"))
    assert (untyped.status, untyped.param) == (400, None)


def test_the_field_crosses_the_process_boundary() -> None:
    wire = msgspec.msgpack.encode(Admission("r1", "prompt token id 9 is out of range", param="prompt"))
    assert msgspec.msgpack.decode(wire, type=Admission).param == "prompt"
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(Admission("r2")), type=Admission).param is None


def test_the_structured_output_and_tool_errors_are_request_validation_errors() -> None:
    assert issubclass(StructuredOutputError, RequestValidationError)
    assert ToolError("tools must be a list", "tools").param == "tools"


def test_an_uncaught_one_is_a_400_in_openais_shape() -> None:
    @get("/refuse", sync_to_thread=False)
    def refuse() -> None:
        raise RequestValidationError("n must be in [1, 128], got 0", "n")

    with TestClient(Litestar([refuse], exception_handlers=EXCEPTION_HANDLERS)) as client:  # type: ignore[arg-type]
        response = client.get("/refuse")
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "n must be in [1, 128], got 0", "type": "BadRequestError",
                                         "param": "n", "code": 400}}

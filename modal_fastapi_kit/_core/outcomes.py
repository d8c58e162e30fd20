"""What the model answered, as one outcome per item: its response model, or its error.

``Outcomes`` checks a batch's result count, coerces each result into the response model (an
exception or a value that does not validate fails that item alone) and turns exceptions into
the ``ServingError`` a client is answered with, logging the ones that are not.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ValidationError

from ..exceptions import PredictError, ServingError, as_predict_error

__all__ = ["CountMismatch", "Outcome", "Outcomes"]

logger = logging.getLogger("modal_fastapi_kit")

# A model's result for one item: its response, or the error that item is answered with.
Outcome = BaseModel | ServingError


class CountMismatch(Exception):
    """predict_batch answered a different number of results than it got items."""


class Outcomes:
    """Results of the predict hook named ``label`` as outcomes of ``response_model``."""

    def __init__(self, label: str, response_model: type[BaseModel]) -> None:
        self.label = label
        self.response_model = response_model

    def check_count(self, results: Any, count: int) -> None:
        """Raise ``CountMismatch`` unless ``results`` is a list of ``count`` results."""
        if not isinstance(results, list | tuple) or len(results) != count:
            got = len(results) if isinstance(results, list | tuple) else type(results)
            raise CountMismatch(
                f"{self.label} returned {got!r} results for {count} items; "
                "return a list with one result per item, in order"
            )

    def coerce(self, result: Any) -> Outcome:
        """A result for one item as the response model, or the error it stands for."""
        model = self.response_model
        if isinstance(result, model):
            return result
        if isinstance(result, ServingError):  # InputError: the client's answer says it
            return result
        if isinstance(result, BaseException):
            return self.error(result, 1)
        try:
            return model.model_validate(result)
        except ValidationError as exc:
            return PredictError(
                f"{self.label} returned a value that does not match "
                f"{model.__name__}: {exc.error_count()} validation errors"
            )

    def error(self, exc: BaseException, count: int) -> ServingError:
        """What ``count`` items that failed with ``exc`` are answered (logged once)."""
        if isinstance(exc, CountMismatch):
            logger.error("%s", exc)
            return PredictError(str(exc))
        self.log_failure(exc, count)
        return as_predict_error(exc, self.label)

    def log_failure(self, exc: BaseException, count: int) -> None:
        if isinstance(exc, ServingError):  # InputError and friends: the client's answer says it
            logger.info("%s: %s (%d items)", self.label, exc, count)
            return
        logger.error("%s raised for %d item%s", self.label, count, "s"[count == 1 :], exc_info=exc)

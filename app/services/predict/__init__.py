"""Run a signature against the model: one input or a batch, typed outputs, chain of thought, repairs
of replies that do not match the signature, and majority votes over n samples.

``service`` (:class:`PredictService`), ``result`` (:class:`Prediction`, :class:`BatchResult`),
``repair`` (one call, retried with the validation errors shown to the model), ``vote`` (the
field-wise majority vote, pure), ``voting`` (n samples in one call, voted).
"""

from app.services.predict.result import BatchResult, Prediction
from app.services.predict.service import PredictService

__all__ = ["BatchResult", "PredictService", "Prediction"]

"""Evaluation: metrics (pure functions), the metric spec of a request, datasets checked up front,
and running a program on a dataset to score it (``POST /evaluate``; /optimize scores through it)."""

from app.services.evaluation.dataset import Example, check_dataset
from app.services.evaluation.evaluate import ExampleResult, Report, Run, evaluate, run_example
from app.services.evaluation.metrics import METRICS
from app.services.evaluation.spec import Metric, compile_metric

__all__ = ["METRICS", "Example", "ExampleResult", "Metric", "Report", "Run", "check_dataset", "compile_metric",
           "evaluate", "run_example"]

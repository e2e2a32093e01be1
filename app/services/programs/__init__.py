"""Named programs: their settings (``config``), the program model and its loader (``model``)."""

from app.services.programs.config import Module, PredictConfig
from app.services.programs.model import Program, load_programs

__all__ = ["Module", "PredictConfig", "Program", "load_programs"]

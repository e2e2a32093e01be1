"""Named programs: their settings (``config``), the program model and its loader (``model``), the
steps of a multi-step program and their load-time checks (``steps``), running them (``pipeline``),
every version of each by name (``registry``) and where saved versions live (``versions``), and
running one (``run``)."""

from app.services.programs.config import Module, PredictConfig
from app.services.programs.model import Program, load_programs
from app.services.programs.pipeline import PipelineResult
from app.services.programs.registry import ProgramRegistry
from app.services.programs.run import ProgramRunner
from app.services.programs.steps import ProgramError, Step

__all__ = ["Module", "PipelineResult", "PredictConfig", "Program", "ProgramError", "ProgramRegistry",
           "ProgramRunner", "Step", "load_programs"]

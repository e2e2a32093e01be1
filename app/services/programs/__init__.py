"""Named programs: their settings (``config``), the program model and its loader (``model``), and
every version of each by name (``registry``), and running one (``run``)."""

from app.services.programs.config import Module, PredictConfig
from app.services.programs.model import Program, load_programs
from app.services.programs.registry import ProgramRegistry
from app.services.programs.run import ProgramRunner

__all__ = ["Module", "PredictConfig", "Program", "ProgramRegistry", "ProgramRunner", "load_programs"]

"""Optimization: few-shot demos bootstrapped from a train set and chosen on a validation set, saved
as a new version of the program (``POST /optimize``)."""

from app.services.optimize.budget import Budget
from app.services.optimize.service import Options, Plan, Strategy, optimize, plan

__all__ = ["Budget", "Options", "Plan", "Strategy", "optimize", "plan"]

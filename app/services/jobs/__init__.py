"""Background jobs (long evaluations and optimizations): ``JobService.submit`` runs the work, clients
follow it at /jobs/{id}; in memory, or in Redis for every replica."""

from app.services.jobs.model import TERMINAL, Job, JobEvent, JobNotFound
from app.services.jobs.service import JobService, Progress

__all__ = ["TERMINAL", "Job", "JobEvent", "JobNotFound", "JobService", "Progress"]

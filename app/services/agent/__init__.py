"""The tool-using agent behind ``POST /agent``.

- ``service``: requests → runs, the run cap, subscribers, disconnects, JSON results;
- ``loop``: one run — model → tool calls (in parallel) → results → model, until an answer;
- ``stream``: how model text becomes ``delta``/``reasoning`` events;
- ``runs``: the runs' event logs (resumable streams) and the sessions' conversations;
- ``shared_runs``, ``shared_sessions``: the same in Redis, for several replicas (``VGATE_REDIS_URL``):
  ``shared_log`` writes a run's log there, ``shared_follow`` follows it, ``shared_keys`` lays it out;
- ``react``: the ReAct text protocol, for upstreams without native tool calling.
"""

from app.services.agent.runs import AgentEvent, AgentRun, RunStore, SessionStore
from app.services.agent.service import AgentService
from app.services.agent.task import AgentTask, Mode

__all__ = ["AgentEvent", "AgentRun", "AgentService", "AgentTask", "Mode", "RunStore", "SessionStore"]

"""A simulated vLLM 0.33 OpenAI-compatible server for vgate's tests and benchmarks.

`server.create_sim_app(SimConfig(...))` gives the ASGI app; `python -m app.sim`
or `vgate sim` serves it. See docs/simulator.md.
"""

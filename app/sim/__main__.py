"""`python -m app.sim --port 8123`: run the vLLM simulator."""

import argparse

from app.sim.cli import add_arguments, run

parser = argparse.ArgumentParser(prog="python -m app.sim",
                                 description="A simulated vLLM 0.33 OpenAI-compatible server.")
add_arguments(parser)
run(parser.parse_args())

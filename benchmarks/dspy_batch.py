"""DSPy's side of the /predict benchmark: ``Predict.batch`` of N typed predictions, in-process.

Runs in DSPy's own venv (benchmarks/.dspy-venv, made by ``bash benchmarks/dspy_env.sh``), never the
project's. benchmarks/compare.py starts it pinned to the core the gateway gets, against the same upstream:

    benchmarks/.dspy-venv/bin/python benchmarks/dspy_batch.py --api-base http://127.0.0.1:8300/v1 \
        --n 1000 --threads default,32,64,128

Signature ``question -> answer: int``, DSPy's default adapter (ChatAdapter) unless ``--adapter json``,
``dspy.LM("openai/sim-model", api_base=..., api_key=..., cache=False)``. ``default`` is DSPy's own
num_threads (dspy.settings.num_threads). Prints one JSON object: per thread count the wall time, the
items answered with an int and the CPU time of this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price map download


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api-base", required=True)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--threads", default="default,32,64,128")
    ap.add_argument("--adapter", choices=("chat", "json"), default="chat")
    a = ap.parse_args()

    import dspy

    lm = dspy.LM("openai/sim-model", api_base=a.api_base, api_key="sk-bench", cache=False, num_retries=0,
                 max_tokens=64, temperature=0.0)
    adapter = dspy.JSONAdapter() if a.adapter == "json" else dspy.ChatAdapter()
    dspy.configure(lm=lm, adapter=adapter)
    predict = dspy.Predict("question -> answer: int")
    examples = [dspy.Example(question=f"Question number {i}: what is {i} plus {i}?").with_inputs("question")
                for i in range(a.n)]
    predict(question="warm-up: what is 1 plus 1?")  # imports, litellm's first call
    out = {"dspy": dspy.__version__, "adapter": a.adapter, "default_threads": dspy.settings.num_threads, "runs": []}
    for spec in a.threads.split(","):
        threads = dspy.settings.num_threads if spec == "default" else int(spec)
        c0, t0 = time.process_time(), time.perf_counter()
        results = predict.batch(examples, num_threads=threads, max_errors=a.n, disable_progress_bar=True)
        wall = time.perf_counter() - t0
        ok = sum(1 for r in results if r is not None and isinstance(getattr(r, "answer", None), int))
        out["runs"].append({"threads": threads, "label": spec, "wall_s": wall, "ok": ok,
                            "cpu_s": time.process_time() - c0})
        print(f"  dspy threads={threads:<4d} {wall:7.2f} s  ok {ok}/{a.n}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

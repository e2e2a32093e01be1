"""A multi-step program with the Python client: research_answer generates sub-questions, answers each
(in parallel), then synthesizes and verifies an answer. Prints the outputs and the trace of every step.

    python examples/multi_step.py [--url http://127.0.0.1:8080] ["Why is the sky blue?"]

The gateway's address defaults to VGATE_BASE_URL (else http://localhost:8080), its key to VGATE_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys

import vgate


def short(value: object, width: int = 100) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 3] + "..."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="the gateway (default: VGATE_BASE_URL, else http://localhost:8080)")
    ap.add_argument("--program", default="research_answer")
    ap.add_argument("question", nargs="?", default="Why is the sky blue?")
    args = ap.parse_args()
    vgate.configure(base_url=args.url)

    try:
        pred = vgate.Program(args.program)(question=args.question)
    except vgate.VGateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)

    print(f"{args.program}: {args.question!r}")
    for name, value in pred.outputs.items():
        print(f"  {name}: {short(value)}")
    print(f"\ntrace ({len(pred.trace or [])} steps):")
    for step in pred.trace or []:
        usage = step.usage.total_tokens if step.raw.get("usage") else "-"
        latency = f"{step.latency_ms:.0f} ms" if step.latency_ms is not None else "-"
        mapped = f", mapped over {step.raw['map']} ({len(step.mapped or [])} items)" if step.raw.get("map") else ""
        print(f"  step {step.name}: {usage} tokens, {latency}{mapped}")
        if step.inputs is not None:
            print(f"    inputs:  {short(step.inputs)}")
        print(f"    outputs: {short(step.raw.get('outputs'))}")
    print(f"\ntotal: {pred.usage.total_tokens} tokens, ${pred.cost_usd:.5f}, {pred.latency_ms:.0f} ms")


if __name__ == "__main__":
    main()

"""Run an agent and print its event stream as it happens, with the Python client.

    python examples/streaming_agent.py [--url http://127.0.0.1:8080] [--force-tool calculator] "What is 12 * 7?"

The gateway's address defaults to VGATE_BASE_URL (else http://localhost:8080), its key to VGATE_API_KEY.
A dropped connection is resumed from where it broke (Last-Event-ID), without repeating an event.
"""

from __future__ import annotations

import argparse
import json
import sys

import vgate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="the gateway (default: VGATE_BASE_URL, else http://localhost:8080)")
    ap.add_argument("--tools", nargs="*", default=None, help="tools to enable (default: all available)")
    ap.add_argument("--force-tool", default=None, help="make the first model call use this tool")
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("input", nargs="?", default="What is 12 * 7? Use the calculator.")
    args = ap.parse_args()
    vgate.configure(base_url=args.url)

    agent = vgate.Agent(tools=args.tools, tool_choice=args.force_tool, max_steps=args.max_steps)
    in_text = None  # the step whose text is being printed
    try:
        for event in agent.stream(args.input):
            if isinstance(event, vgate.DeltaEvent):
                if in_text != event.step:  # the last step's text is the answer
                    print(f"\nassistant (step {event.step}): ", end="")
                    in_text = event.step
                print(event.text, end="", flush=True)
                continue
            if in_text is not None:
                print()
                in_text = None
            if isinstance(event, vgate.RunEvent):
                print(f"run {event.run_id} on {event.model} with tools {event.tools}")
            elif isinstance(event, vgate.ReasoningEvent):
                print(f"  (thinking) {event.text}")
            elif isinstance(event, vgate.ToolCallEvent):
                print(f"-> {event.name}({json.dumps(event.arguments)})")
            elif isinstance(event, vgate.ToolResultEvent):
                shown = event.result if event.ok else event.error
                print(f"<- {event.name}: {json.dumps(shown)[:200]}  ({event.latency_ms} ms)")
            elif isinstance(event, vgate.FinalEvent):
                print(f"\nanswer: {event.answer}")
                print(f"stop: {event.stop_reason} after {event.steps} steps, {event.usage.total_tokens} tokens, "
                      f"${event.cost_usd:.5f}, {event.latency_ms:.0f} ms")
            elif isinstance(event, vgate.ErrorEvent):
                print(f"\nerror {event.type}: {event.message}", file=sys.stderr)
                sys.exit(2)
    except vgate.VGateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

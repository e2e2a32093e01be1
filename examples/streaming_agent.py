"""Run an agent and print its event stream as it happens.

    python examples/streaming_agent.py [--url http://127.0.0.1:8080] [--force-tool calculator] "What is 12 * 7?"
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx


def events(response: httpx.Response):
    """Parse Server-Sent Events: yields (id, event, data)."""
    ev_id, name, data = None, None, []
    for line in response.iter_lines():
        if not line:
            if name:
                yield ev_id, name, json.loads("\n".join(data))
            ev_id, name, data = None, None, []
        elif line.startswith(":"):
            continue  # heartbeat
        elif line.startswith("id:"):
            ev_id = line[3:].strip()
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--tools", nargs="*", default=None, help="tools to enable (default: all available)")
    ap.add_argument("--force-tool", default=None, help="make the first model call use this tool")
    ap.add_argument("--max-steps", type=int, default=4)
    ap.add_argument("input", nargs="?", default="What is 12 * 7? Use the calculator.")
    args = ap.parse_args()

    payload: dict = {"input": args.input, "max_steps": args.max_steps}
    if args.tools is not None:
        payload["tools"] = args.tools
    if args.force_tool:
        payload["tool_choice"] = {"type": "function", "function": {"name": args.force_tool}}

    with httpx.Client(base_url=args.url, timeout=httpx.Timeout(10, read=None)) as client:
        with client.stream("POST", "/agent", json=payload) as r:
            if r.status_code != 200:
                r.read()
                print(f"HTTP {r.status_code}: {r.text}", file=sys.stderr)
                sys.exit(1)
            in_text = None  # the step whose text is being printed
            for _, name, data in events(r):
                if name == "delta":
                    if in_text != data["step"]:  # the last step's text is the answer
                        print(f"\nassistant (step {data['step']}): ", end="")
                        in_text = data["step"]
                    print(data["text"], end="", flush=True)
                    continue
                if in_text is not None:
                    print()
                    in_text = None
                if name == "run":
                    print(f"run {data['run_id']} on {data['model']} with tools {data['tools']}")
                elif name == "reasoning":
                    print(f"  (thinking) {data['text']}")
                elif name == "tool_call":
                    print(f"-> {data['name']}({json.dumps(data['arguments'])})")
                elif name == "tool_result":
                    shown = data["result"] if data["ok"] else data["error"]
                    print(f"<- {data['name']}: {json.dumps(shown)[:200]}  ({data['latency_ms']} ms)")
                elif name == "final":
                    print(f"\nanswer: {data['answer']}")
                    usage = data["usage"]["total_tokens"]
                    print(f"stop: {data['stop_reason']} after {data['steps']} steps, {usage} tokens, "
                          f"${data['cost_usd']:.5f}, {data['latency_ms']:.0f} ms")
                elif name == "error":
                    print(f"\nerror {data['type']}: {data['message']}", file=sys.stderr)
                    sys.exit(2)


if __name__ == "__main__":
    main()

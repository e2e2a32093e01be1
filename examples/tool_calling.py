"""List the gateway's tools and call one directly, with the Python client.

    python examples/tool_calling.py [--url http://127.0.0.1:8080] [EXPRESSION]

The gateway's address defaults to VGATE_BASE_URL (else http://localhost:8080), its key to VGATE_API_KEY.
"""

from __future__ import annotations

import argparse
import json

import vgate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="the gateway (default: VGATE_BASE_URL, else http://localhost:8080)")
    ap.add_argument("expression", nargs="?", default="2 * (3 + 4) ** 2 / sqrt(16)")
    args = ap.parse_args()

    with vgate.Client(args.url, timeout=30) as client:
        print("Tools:")
        for t in client.tools():
            state = "available" if t["available"] else f"unavailable: {t.get('unavailable_reason')}"
            params = ", ".join(t["parameters"].get("properties", {}))
            print(f"  {t['name']}({params})  [{state}]")
            print(f"      {t['description'].splitlines()[0]}")

        for expression in (args.expression, "9**9**9**9"):
            try:
                answer = client.call_tool("calculator", expression=expression)
                print(f"\ncalculator({expression!r}) = {answer['result']['result']}  ({answer['latency_ms']:.2f} ms)")
            except vgate.VGateError as e:  # 9**9**9**9: an InvalidRequest (422 tool_error), refused at once
                print(f"\ncalculator({expression!r}) -> HTTP {e.status} {e.type}: {e.message}")

        try:
            shown = client.call_tool("current_time", timezone="Europe/Paris")["result"]
        except vgate.VGateError as e:
            shown = e.error
        print("\ncurrent_time(Europe/Paris) =", json.dumps(shown))


if __name__ == "__main__":
    main()

"""List the gateway's tools and call one directly.

    python examples/tool_calling.py [--url http://127.0.0.1:8080] [EXPRESSION]
"""

from __future__ import annotations

import argparse
import json

import httpx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("expression", nargs="?", default="2 * (3 + 4) ** 2 / sqrt(16)")
    args = ap.parse_args()

    with httpx.Client(base_url=args.url, timeout=30) as client:
        tools = client.get("/tools").raise_for_status().json()["tools"]
        print("Tools:")
        for t in tools:
            state = "available" if t["available"] else f"unavailable: {t.get('unavailable_reason')}"
            params = ", ".join(t["parameters"].get("properties", {}))
            print(f"  {t['name']}({params})  [{state}]")
            print(f"      {t['description'].splitlines()[0]}")

        for expression in (args.expression, "9**9**9**9"):
            r = client.post("/tools/calculator", json={"arguments": {"expression": expression}})
            body = r.json()
            if r.is_success:
                print(f"\ncalculator({expression!r}) = {body['result']['result']}  ({body['latency_ms']:.2f} ms)")
            else:
                err = body["error"]
                print(f"\ncalculator({expression!r}) -> HTTP {r.status_code} {err['type']}: {err['message']}")

        r = client.post("/tools/current_time", json={"arguments": {"timezone": "Europe/Paris"}})
        print("\ncurrent_time(Europe/Paris) =", json.dumps(r.json().get("result", r.json())))


if __name__ == "__main__":
    main()

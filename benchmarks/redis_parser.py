"""redis-py's reply parser, pure Python against hiredis (C), side by side in one process (issue 8).

    .venv/bin/python benchmarks/redis_parser.py        # ~20 s; needs Debian's redis-server

The gateway's per-call Redis work is a few EVALSHAs of short scripts and their small array
replies: this times exactly that (the admit script's shape) on one asyncio client per parser,
rounds alternating, and prints CPU microseconds per command of this process (the client side, what
the gateway pays). hiredis is used by redis-py whenever it is installed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = "return {'', '0', ARGV[1], '12.5', 42, '0.25', '1.5'}"  # the admit script's reply shape


async def per_command_us(parser_class, url: str, n: int, concurrency: int) -> float:
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(url, parser_class=parser_class)
    script = client.register_script(SCRIPT)
    await script(keys=["a"], args=[1])

    async def worker(k: int) -> None:
        for i in range(k):
            await script(keys=["vg:k:{x}:rq"], args=[i])

    t0 = time.process_time()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    cpu = time.process_time() - t0
    await client.aclose()
    return cpu / n * 1e6


def main() -> None:
    import uvloop
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
    from redis.utils import HIREDIS_AVAILABLE

    from benchmarks._common import free_port, machine, pin_self
    from benchmarks.access import redis_server

    if not HIREDIS_AVAILABLE:
        sys.exit("hiredis is not installed: pip install hiredis")
    pin_self("target")
    print(f"machine: {machine()}")
    results: dict[str, list[float]] = {"python": [], "hiredis": []}
    with redis_server(free_port()) as url:
        for rnd in range(6):
            order = [("python", _AsyncRESP2Parser), ("hiredis", _AsyncHiredisParser)]
            for name, cls in order if rnd % 2 == 0 else order[::-1]:
                for c in (1, 64):
                    results.setdefault(f"{name} c={c}", []).append(uvloop.run(per_command_us(cls, url, 20000, c)))
    for key in sorted(k for k in results if "c=" in k):
        v = sorted(results[key])
        print(f"{key:14s} CPU per EVALSHA: median {v[len(v) // 2]:6.1f} us  (range {v[0]:.1f}-{v[-1]:.1f})")


if __name__ == "__main__":
    main()

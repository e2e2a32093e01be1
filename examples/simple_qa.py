"""Typed answers from the gateway with the Python client: Predict, ChainOfThought, a program's batch.

    python examples/simple_qa.py [--url http://127.0.0.1:8080] ["What is 2 + 3?"]

The gateway's address defaults to VGATE_BASE_URL (else http://localhost:8080), its key to VGATE_API_KEY.
"""

from __future__ import annotations

import argparse
import sys

import vgate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="the gateway (default: VGATE_BASE_URL, else http://localhost:8080)")
    ap.add_argument("question", nargs="?", default="What is 2 + 3?")
    args = ap.parse_args()
    vgate.configure(base_url=args.url)

    try:
        # The output is constrained to {"answer": <integer>} and validated: .answer is an int.
        qa = vgate.Predict("question -> answer: int", temperature=0)
        pred = qa(question=args.question)
        print(f"Predict: {args.question!r} -> answer={pred.answer!r} ({type(pred.answer).__name__})")
        print(f"  {pred.usage.total_tokens} tokens, ${pred.cost_usd:.5f}, {pred.latency_ms:.0f} ms on {pred.model}")

        cot = vgate.ChainOfThought("context: list[str], question -> answer")
        pred = cot(context=["The Eiffel Tower is in Paris.", "Paris is in France."],
                   question="In which country is the Eiffel Tower?")
        print(f"\nChainOfThought: answer={pred.answer!r}")
        print(f"  reasoning: {pred.reasoning!r}")

        # One request; the gateway runs the items concurrently. A failed item is an error in the list.
        texts = [{"text": "I love it"}, {"text": "Awful service"}, {"review": "the wrong field"}]
        results = vgate.Program("sentiment").batch(texts)
        print(f"\nProgram('sentiment').batch: {results.succeeded} succeeded, {results.failed} failed, "
              f"{results.usage.total_tokens} tokens, ${results.cost_usd:.5f}")
        for example, result in zip(texts, results, strict=True):
            if isinstance(result, vgate.PredictionError):
                print(f"  {example} -> error {result.type}: {result.message}")
            else:
                print(f"  {example} -> {result.sentiment} ({result.confidence})")

        try:
            vgate.Program("no_such_program")(text="x")
        except vgate.NotFound as e:
            print(f"\nerrors are typed: {type(e).__name__} {e.status} {e.type}; available: {e.error['available']}")
    except vgate.VGateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

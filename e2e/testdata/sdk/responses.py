"""Drives the official OpenAI Python SDK's Responses API through an llmedge edge
(run by e2e/tokens_test.go).

One normal and one streaming `client.responses.create` call, configured with nothing
but the base URL and the llmedge caller token. Prints one JSON line per call:

    {"mode": "normal", "text": "...", "input_tokens": 5, "output_tokens": 5, "ok": true}

with the usage the SDK parsed from the answer (the stream's from its
response.completed event). A call that raises prints "ok": false and "error"; the
script then exits 1.

Environment: OPENAI_BASE_URL (<edge>/openai/v1), LLMEDGE_TOKEN.
"""

import json
import os
import sys

import openai

TIMEOUT_S = 20
PROMPT = "Say hello through the edge."
MODEL = "fake-model"


def main():
    client = openai.OpenAI(
        base_url=os.environ["OPENAI_BASE_URL"],
        api_key=os.environ["LLMEDGE_TOKEN"],
        max_retries=0,
        timeout=TIMEOUT_S,
    )

    def normal():
        r = client.responses.create(model=MODEL, input=PROMPT)
        return r.output_text, r.usage

    def stream():
        parts, final = [], None
        for event in client.responses.create(model=MODEL, input=PROMPT, stream=True):
            if event.type == "response.output_text.delta":
                parts.append(event.delta)
            elif event.type == "response.completed":
                final = event.response
        if final is None:
            raise RuntimeError("the stream ended without response.completed")
        return "".join(parts), final.usage

    failed = False
    for mode, call in (("normal", normal), ("stream", stream)):
        line = {"sdk": "openai", "version": openai.__version__, "mode": mode}
        try:
            text, usage = call()
            line.update(text=text, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, ok=True)
        except Exception as e:
            line.update(ok=False, error=f"{type(e).__name__}: {e}")
            print(f"responses.py: {mode}: {line['error']}", file=sys.stderr)
            failed = True
        print(json.dumps(line), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

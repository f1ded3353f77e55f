"""Drives the official Python SDKs through an llmedge edge (run by e2e/sdk_test.go).

Each SDK is configured with nothing but its base URL and the llmedge caller token
as its API key, exactly as an application would be pointed at the edge. For
every SDK it makes one normal and one streaming call and prints one JSON line
per call:

    {"sdk": "openai", "version": "...", "mode": "normal", "text": "...", "ok": true}

A call that raises prints a line with "ok": false and "error" (exception type
and message) instead; the script then exits 1 after trying the other calls.
Retries are off and timeouts short so that a failure is fast and visible.

Environment: OPENAI_BASE_URL (<edge>/openai/v1), ANTHROPIC_BASE_URL
(<edge>/anthropic), GEMINI_BASE_URL (<edge>/gemini), LLMEDGE_TOKEN.
"""

import json
import os
import sys

TIMEOUT_S = 20
PROMPT = "Say hello through the edge."
# Model names the fake upstream accepts (it answers any); real names would draw
# deprecation warnings from the SDKs as they age.
OPENAI_MODEL = "fake-model"
ANTHROPIC_MODEL = "claude-fake"
GEMINI_MODEL = "gemini-fake"


def env(name):
    v = os.environ.get(name, "")
    if not v:
        print(f"check.py: {name} is not set", file=sys.stderr)
        sys.exit(2)
    return v


def openai_calls(base_url, token):
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=TIMEOUT_S)
    messages = [{"role": "user", "content": PROMPT}]

    def normal():
        r = client.chat.completions.create(model=OPENAI_MODEL, messages=messages)
        return r.choices[0].message.content

    def stream():
        parts = []
        for chunk in client.chat.completions.create(model=OPENAI_MODEL, messages=messages, stream=True):
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
        return "".join(parts)

    return "openai", openai.__version__, normal, stream


def anthropic_calls(base_url, token):
    import anthropic

    client = anthropic.Anthropic(base_url=base_url, api_key=token, max_retries=0, timeout=TIMEOUT_S)
    kwargs = dict(model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": PROMPT}])

    def normal():
        m = client.messages.create(**kwargs)
        return "".join(b.text for b in m.content if b.type == "text")

    def stream():
        with client.messages.stream(**kwargs) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
        if final.stop_reason != "end_turn":
            raise RuntimeError(f"stream ended with stop_reason {final.stop_reason!r}")
        return text

    return "anthropic", anthropic.__version__, normal, stream


def genai_calls(base_url, token):
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key=token,
        http_options=types.HttpOptions(
            base_url=base_url,
            timeout=TIMEOUT_S * 1000,  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # 1 attempt: no retries
        ),
    )

    def normal():
        return client.models.generate_content(model=GEMINI_MODEL, contents=PROMPT).text

    def stream():
        return "".join(c.text or "" for c in client.models.generate_content_stream(model=GEMINI_MODEL, contents=PROMPT))

    return "google-genai", genai.__version__, normal, stream


def main():
    token = env("LLMEDGE_TOKEN")
    setups = [
        (openai_calls, env("OPENAI_BASE_URL")),
        (anthropic_calls, env("ANTHROPIC_BASE_URL")),
        (genai_calls, env("GEMINI_BASE_URL")),
    ]
    failed = False
    for setup, base_url in setups:
        try:
            sdk, version, normal, stream = setup(base_url, token)
        except Exception as e:  # an import or constructor failure
            print(f"check.py: {setup.__name__}: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
            continue
        for mode, call in (("normal", normal), ("stream", stream)):
            line = {"sdk": sdk, "version": version, "mode": mode}
            try:
                line.update(text=call(), ok=True)
            except Exception as e:
                line.update(ok=False, error=f"{type(e).__name__}: {e}")
                print(f"check.py: {sdk} {mode}: {line['error']}", file=sys.stderr)
                failed = True
            print(json.dumps(line), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

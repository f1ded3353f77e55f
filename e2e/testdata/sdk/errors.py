"""Checks that the official Python SDKs read the errors the edge itself returns (run by
e2e/upstreamview_test.go).

Each case makes the edge answer with one of its own replies (no route, quota, upstream
down, upstream timeout) through one SDK, catches the SDK's exception and prints what the
SDK understood of the body, one JSON line per case:

    {"case": "openai 429", "status": 429, "kind": "requests", "code": "rate_limit_exceeded",
     "message": "llmedge: ...", "request_id": "..."}

"kind" is error.type for OpenAI and Anthropic, error.status for Gemini. A call that does not
raise prints "raised": false. Retries are off.

Environment: EDGE (http://127.0.0.1:<port>), TOKEN_APP, TOKEN_LIM_OPENAI,
TOKEN_LIM_ANTHROPIC, TOKEN_LIM_GEMINI.
"""

import json
import os

TIMEOUT_S = 20
MESSAGES = [{"role": "user", "content": "hi"}]


def report(case, fn, extract):
    try:
        fn()
    except Exception as e:  # the SDK's own error type; extract reads what it parsed
        line = {"case": case, "raised": True, "exception": type(e).__name__}
        try:
            line.update(extract(e))
        except Exception as x:
            line["extract_error"] = f"{type(x).__name__}: {x}"
        print(json.dumps(line), flush=True)
        return
    print(json.dumps({"case": case, "raised": False}), flush=True)


def openai_cases(edge, app, limited):
    import openai

    def client(base, token):
        return openai.OpenAI(base_url=edge + base, api_key=token, max_retries=0, timeout=TIMEOUT_S)

    def call(c):
        return lambda: c.chat.completions.create(model="fake-model", messages=MESSAGES)

    def extract(e):
        # openai keeps the body's "error" object in e.body and reads type and code from it.
        return {"status": e.status_code, "kind": e.type, "code": e.code,
                "message": e.body.get("message"), "request_id": e.body.get("request_id")}

    report("openai 404", call(client("/nowhere/v1", app)), extract)
    lim = client("/openai/v1", limited)
    call(lim)()
    report("openai 429", call(lim), extract)


def anthropic_cases(edge, app, limited):
    import anthropic

    def client(base, token):
        return anthropic.Anthropic(base_url=edge + base, api_key=token, max_retries=0, timeout=TIMEOUT_S)

    def call(c):
        return lambda: c.messages.create(model="claude-fake", max_tokens=16, messages=MESSAGES)

    def extract(e):
        return {"status": e.status_code, "kind": e.body["error"]["type"],
                "message": e.body["error"]["message"], "request_id": e.body.get("request_id")}

    report("anthropic 404", call(client("/nowhere", app)), extract)
    report("anthropic 503", call(client("/down", app)), extract)
    lim = client("/anthropic", limited)
    call(lim)()
    report("anthropic 429", call(lim), extract)


def genai_cases(edge, app, limited):
    from google import genai
    from google.genai import types

    def client(base, token, headers=None):
        return genai.Client(api_key=token, http_options=types.HttpOptions(
            base_url=edge + base, timeout=TIMEOUT_S * 1000, headers=headers,
            retry_options=types.HttpRetryOptions(attempts=1)))

    def call(c):
        return lambda: c.models.generate_content(model="gemini-fake", contents="hi")

    def extract(e):
        return {"status": e.code, "kind": e.status, "message": e.message,
                "request_id": (e.details or {}).get("error", {}).get("request_id")}

    report("gemini 404", call(client("/nowhere", app)), extract)
    report("gemini 504", call(client("/slow", app, {"x-fake-delay": "3s"})), extract)
    lim = client("/gemini", limited)
    call(lim)()
    report("gemini 429", call(lim), extract)


def main():
    edge = os.environ["EDGE"]
    app = os.environ["TOKEN_APP"]
    openai_cases(edge, app, os.environ["TOKEN_LIM_OPENAI"])
    anthropic_cases(edge, app, os.environ["TOKEN_LIM_ANTHROPIC"])
    genai_cases(edge, app, os.environ["TOKEN_LIM_GEMINI"])


if __name__ == "__main__":
    main()

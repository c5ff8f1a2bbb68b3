"""Schemathesis hooks for tend's API test: every call the API rejects must change nothing.

Before each mutating call (not GET/HEAD) the state a user can see is read through the API;
after a 4xx answer it is read again and must be the same. The base URL, token and CA come from
TEND_URL, TEND_TOKEN and TEND_CA.
"""

import http.client
import json
import os
import ssl
import urllib.parse

import schemathesis

URL = urllib.parse.urlsplit(os.environ["TEND_URL"])
TOKEN = os.environ["TEND_TOKEN"]
CTX = ssl.create_default_context(cafile=os.environ["TEND_CA"])
BEFORE = {}
CONN = None


def get(path):
    """GET over one kept-alive connection (reopened when the server closed it)."""
    global CONN
    for attempt in range(2):
        if CONN is None:
            CONN = http.client.HTTPSConnection(URL.hostname, URL.port, context=CTX, timeout=30)
        try:
            CONN.request("GET", path, headers={"Authorization": "Bearer " + TOKEN})
            r = CONN.getresponse()
            body = r.read()
            if r.status != 200:
                raise AssertionError(f"GET {path}: {r.status} {body[:200]!r}")
            return json.loads(body)
        except (http.client.HTTPException, OSError):
            CONN.close()
            CONN = None
            if attempt:
                raise


def state():
    """What a rejected call must not change: services and their generations, plans'
    interruptions and steps, instances and incarnations, tokens, windows, volumes, agents."""
    services = get("/v1/services")
    out = {
        "services": sorted((s["name"], s["generation"]) for s in services),
        "tokens": sorted(t["name"] for t in get("/v1/tokens")),
        "windows": sorted(w["id"] for w in get("/v1/jobs/windows")),
        "volumes": sorted((v["id"], v["state"]) for v in get("/v1/volumes")),
        "agents": sorted(a["id"] for a in get("/v1/agents")),
    }
    for s in services:
        name = urllib.parse.quote(s["name"], safe="")
        out["plans/" + s["name"]] = [
            (p["name"], p["interrupted"], [(ph["name"], ph["interrupted"]) for ph in p["phases"]])
            for p in get(f"/v1/services/{name}/plans")
        ]
        out["pods/" + s["name"]] = sorted((p["instance"], p["incarnation"]) for p in get(f"/v1/services/{name}/pods"))
    return out


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method.upper() not in ("GET", "HEAD"):
        BEFORE[id(case)] = state()


@schemathesis.check
def rejected_calls_change_nothing(ctx, response, case):
    before = BEFORE.pop(id(case), None)
    if before is None or not (400 <= response.status_code < 500):
        return None
    after = state()
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise AssertionError(
            f"{case.method} {case.formatted_path} was refused with {response.status_code} "
            f"but changed {', '.join(changed)}: before {[before.get(k) for k in changed]}, "
            f"after {[after.get(k) for k in changed]}"
        )
    return None

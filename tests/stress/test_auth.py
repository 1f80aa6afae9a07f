"""Scenario 7: every hub route x every kind of credential; cookies need XSRF to change state."""

from __future__ import annotations

import asyncio
import json
import secrets
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from typing import Any

from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from spindel_jupyter.core import wire
from tests.stress.common import StressHub, record

NOTEBOOK = {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def http(
    hub: StressHub, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(hub.http_url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def login_cookie(hub: StressHub) -> tuple[str, str]:
    """The login cookie a token-authenticated request gets back (name, value)."""
    status, headers = http(hub, "GET", "api/status", {"Authorization": f"token {hub.token}"})
    assert status == 200
    jar: SimpleCookie = SimpleCookie()
    for line in headers.get_all("Set-Cookie") or []:
        jar.load(line)
    names = [name for name in jar if name.startswith("username-")]
    assert names, f"no login cookie in {headers.get_all('Set-Cookie')}"
    return names[0], jar[names[0]].value


def ws_status(hub: StressHub, headers: dict[str, str]) -> int:
    async def attempt() -> int:
        try:
            ws = await websocket_connect(HTTPRequest(hub.ws_url, headers=headers))
        except HTTPClientError as exc:
            return exc.code
        name = f"auth-{secrets.token_hex(3)}"
        await ws.write_message(
            wire.pack_frame({"t": "hello", "name": name, "kind": "script", "session": name}), binary=True
        )
        reply = await asyncio.wait_for(ws.read_message(), 10)
        ws.close()
        header, _ = wire.unpack_frame(reply)  # type: ignore[arg-type]
        return 101 if header.get("t") == "welcome" else 500

    return asyncio.run(attempt())


def test_auth_matrix(stress_hub: StressHub, limits_hub: StressHub) -> None:
    hub, other = stress_hub, limits_hub
    (hub.notebooks / "auth").mkdir(exist_ok=True)
    (hub.notebooks / "auth" / "nb.ipynb").write_text(json.dumps(NOTEBOOK))
    hub.request("POST", "spindel/api/workspaces", {"name": "authws", "path": "auth/nb.ipynb"})
    name, value = login_cookie(hub)
    other_name, other_value = login_cookie(other)
    xsrf = secrets.token_hex(16)
    credentials: dict[str, dict[str, str]] = {
        "none": {},
        "wrong_token": {"Authorization": f"token {secrets.token_hex(16)}"},
        "right_token": {"Authorization": f"token {hub.token}"},
        "right_cookie": {"Cookie": f"{name}={value}"},
        "other_server_cookie": {"Cookie": f"{other_name}={other_value}"},
        "other_server_cookie_renamed": {"Cookie": f"{name}={other_value}"},
    }
    allowed = {"right_token", "right_cookie"}
    gets = [
        "spindel/api/peers",
        "spindel/api/topics",
        "spindel/api/stats",
        "spindel/api/workspaces",
        "spindel/api/workspaces/authws",
        "spindel/api/workspaces/no-such-workspace",
    ]
    problems: list[str] = []
    checked = 0
    for who, headers in credentials.items():
        ok = who in allowed
        status = ws_status(hub, headers)
        checked += 1
        if status != (101 if ok else 403):
            problems.append(f"ws with {who}: {status}")
        for path in gets:
            status, _ = http(hub, "GET", path, headers)
            checked += 1
            expected = (404 if path.endswith("no-such-workspace") else 200) if ok else 403
            if status != expected:
                problems.append(f"GET {path} with {who}: {status}, expected {expected}")
        for path, body in [
            ("spindel/api/workspaces/authws/claim", {}),
            ("spindel/api/workspaces/no-such-workspace/claim", {}),
            ("spindel/api/workspaces", {"name": "authws", "path": "auth/nb.ipynb"}),
        ]:
            plain = {**headers, "Content-Type": "application/json"}
            with_xsrf = {**plain, "X-XSRFToken": xsrf}
            if "Cookie" in headers:
                with_xsrf["Cookie"] = f"{headers['Cookie']}; _xsrf={xsrf}"
            expected_ok = 404 if "no-such" in path else 200
            for variant, sent in (("", plain), (" +xsrf", with_xsrf)):
                status, _ = http(hub, "POST", path, sent, body)
                checked += 1
                cookie_only = who == "right_cookie" and not variant
                expected = expected_ok if ok and not cookie_only else 403
                if status != expected:
                    problems.append(f"POST {path} with {who}{variant}: {status}, expected {expected}")
    record("7_auth", requests_checked=checked, wrong_answers=len(problems))
    assert not problems, "\n".join(problems)

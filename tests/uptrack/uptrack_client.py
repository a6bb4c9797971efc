#!/usr/bin/env python3
"""A Ksplice Uptrack API client written only from Oracle's documentation of
the Uptrack API (version 1), to check that scripts written for Ksplice work
against hotsplice-server unchanged.

Documented: every request carries X-Uptrack-User and X-Uptrack-Key; JSON
bodies; paths under /api/1/:
  GET  machines                   list of machines
  GET  machine/UUID/describe      one machine, with kernels, group, updates
  POST machine/UUID/authorize     {"authorized": bool}
  POST machine/UUID/group         {"group_name": str}; unknown UUID -> 404

Usage: uptrack_client.py BASE_URL USER KEY
Exits 0 when every documented behaviour held, 1 with a message otherwise.
Only the standard library is used.
"""
import json
import sys
import urllib.error
import urllib.request

LIST_FIELDS = {
    "uuid": str,
    "hostname": str,
    "ip": str,
    "status": str,
    "authorization": str,
    "autoinstall": bool,
    "active": bool,
    "last_seen": str,
    "uptrack_client_version": str,
}
DESCRIBE_FIELDS = {
    "original_kernel": str,
    "effective_kernel": str,
    "installed_updates": list,
}
STATUSES = {"outofdate", "uptodate", "unsupported"}
AUTHORIZATIONS = {"allowed", "denied", "pending"}


class Api:
    def __init__(self, base, user, key):
        self.base = base.rstrip("/") + "/api/1/"
        self.headers = {
            "X-Uptrack-User": user,
            "X-Uptrack-Key": key,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers=self.headers
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read()
                return r.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as e:
            return e.code, None


def fail(msg):
    print("uptrack client: " + msg, file=sys.stderr)
    sys.exit(1)


def check_fields(obj, fields, what):
    for name, typ in fields.items():
        if name not in obj:
            fail(f"{what}: field {name!r} missing (have {sorted(obj)})")
        if not isinstance(obj[name], typ):
            fail(f"{what}: field {name!r} is {type(obj[name]).__name__}, want {typ.__name__}")


def main():
    if len(sys.argv) != 4:
        fail("usage: uptrack_client.py BASE_URL USER KEY")
    api = Api(*sys.argv[1:])

    bad = Api(sys.argv[1], sys.argv[2], "0" * 32)
    status, _ = bad.call("GET", "machines")
    if status not in (401, 403):
        fail(f"a wrong key got HTTP {status}, want 401 or 403")

    status, machines = api.call("GET", "machines")
    if status != 200 or not isinstance(machines, list):
        fail(f"GET machines: HTTP {status}, {machines!r}")
    if not machines:
        fail("GET machines: no machines (the test registers some first)")
    for m in machines:
        check_fields(m, LIST_FIELDS, "GET machines entry")
        if m["status"] not in STATUSES:
            fail(f"status {m['status']!r} not one of {sorted(STATUSES)}")
        if m["authorization"] not in AUTHORIZATIONS:
            fail(f"authorization {m['authorization']!r} not one of {sorted(AUTHORIZATIONS)}")
        if not (m["last_seen"].endswith("Z") and "T" in m["last_seen"]):
            fail(f"last_seen {m['last_seen']!r} is not ISO 8601 UTC")

    out = {"machines": len(machines), "described": []}
    for m in machines:
        uuid = m["uuid"]
        status, d = api.call("GET", f"machine/{uuid}/describe")
        if status != 200:
            fail(f"describe {uuid}: HTTP {status}")
        check_fields(d, LIST_FIELDS, f"describe {uuid}")
        check_fields(d, DESCRIBE_FIELDS, f"describe {uuid}")
        if "group" not in d:
            fail(f"describe {uuid}: field 'group' missing")
        for u in d["installed_updates"]:
            if not isinstance(u, dict) or "ID" not in u or "Name" not in u:
                fail(f"describe {uuid}: installed update {u!r} lacks ID/Name")
        out["described"].append(
            {
                "uuid": uuid,
                "effective_kernel": d["effective_kernel"],
                "installed": [u["ID"] for u in d["installed_updates"]],
            }
        )

    target = machines[0]["uuid"]
    for authorized, want in ((False, "denied"), (True, "allowed")):
        status, _ = api.call("POST", f"machine/{target}/authorize", {"authorized": authorized})
        if status != 200:
            fail(f"authorize {target} {authorized}: HTTP {status}")
        _, d = api.call("GET", f"machine/{target}/describe")
        if d["authorization"] != want:
            fail(f"after authorize={authorized}, authorization is {d['authorization']!r}")

    status, _ = api.call("POST", f"machine/{target}/group", {"group_name": "uptrack-scripts"})
    if status != 200:
        fail(f"group {target}: HTTP {status}")
    _, d = api.call("GET", f"machine/{target}/describe")
    if d["group"] != "uptrack-scripts":
        fail(f"after setting the group, describe says {d['group']!r}")
    status, _ = api.call("POST", f"machine/{target}/group", {"group_name": ""})
    _, d = api.call("GET", f"machine/{target}/describe")
    if status != 200 or d["group"] not in ("", None):
        fail(f"ungrouping: HTTP {status}, group {d['group']!r}")

    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path, body in (
        ("GET", f"machine/{unknown}/describe", None),
        ("POST", f"machine/{unknown}/authorize", {"authorized": True}),
        ("POST", f"machine/{unknown}/group", {"group_name": "x"}),
    ):
        status, _ = api.call(method, path, body)
        if status != 404:
            fail(f"{method} {path} for an unknown UUID: HTTP {status}, want 404")

    print(json.dumps(out))


if __name__ == "__main__":
    main()

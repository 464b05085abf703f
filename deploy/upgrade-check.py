#!/usr/bin/env python3
"""A failure in the middle of a rolling upgrade, with real processes on loopback.

Three nodes of the OLD `liege` executable share a SQLite file (or the `--store` URL given);
node c is restarted onto NEW, 200 counters are incremented (the keys c owns are written by
NEW), then c is SIGKILLed: its keys must answer on the OLD survivors, a retry of an
increment c applied must get its first reply, and every counter must end at exactly 4.
Prints a JSON summary; exits 1 if any of that fails.

usage: upgrade-check.py OLD NEW DIR [--store URL]"""
import json, os, signal, socket, subprocess, sys, time, urllib.request, urllib.error

if len(sys.argv) not in (4, 6) or (len(sys.argv) == 6 and sys.argv[4] != "--store"):
    raise SystemExit(__doc__)
old, new, d = sys.argv[1], sys.argv[2], sys.argv[3]
store = sys.argv[5] if len(sys.argv) == 6 else f"sqlite:{d}/liege.db"
os.makedirs(d, exist_ok=True)
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
nodes = {n: (port(), port()) for n in ["a", "b", "c"]}
procs = {}
import atexit
atexit.register(lambda: [p.kill() for p in procs.values()])
env = dict(os.environ, LIEGE_SECRET="s" * 32, LIEGE_LOG="info")
def start(n, exe):
    l, h = nodes[n]
    log = open(f"{d}/{n}.log", "a")
    procs[n] = subprocess.Popen([exe, "node", "--name", n, "--region", "iad", "--listen", f"127.0.0.1:{l}",
        "--http", f"127.0.0.1:{h}", "--store", store, "--lease-ttl-ms", "1000", "--partitions", "64"],
        env=env, stdout=log, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{h}/readyz", timeout=1); return
        except Exception:
            time.sleep(0.05)
    raise SystemExit(f"{n} never ready")
def req(n, path, idem=None, method="POST"):
    h = nodes[n][1]
    r = urllib.request.Request(f"http://127.0.0.1:{h}{path}", method=method, data=b"" if method == "POST" else None)
    if idem: r.add_header("Idempotency-Key", idem)
    try:
        with urllib.request.urlopen(r, timeout=10) as resp: return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e: return e.code, e.read().decode()[:200]
    except Exception as e: return 0, str(e)
keys = [f"k{i}" for i in range(200)]
for n in "abc": start(n, old)
time.sleep(2)
def phase(tag, via="a", retry_for=8.0):
    out = {}
    for k in keys:
        end = time.time() + retry_for
        while True:
            st, body = req(via, f"/demo/keys/{k}/inc", f"{tag}-{k}")
            if st == 200 or time.time() > end: break
            time.sleep(0.1)
        out[k] = (st, body)
    return out
p1 = phase("p1")
assert all(s == 200 for s, _ in p1.values()), [v for v in p1.values() if v[0] != 200][:3]
procs["c"].send_signal(signal.SIGTERM); procs["c"].wait()
start("c", new); time.sleep(3)
p2 = phase("p2")
owned_by_c = [k for k in keys if req("a", f"/demo/keys/{k}/owner", method="GET")[1].get("owner") == "c"]
procs["c"].send_signal(signal.SIGKILL); procs["c"].wait()
time.sleep(3)
p3 = phase("p3", retry_for=2.0)
retry = {k: req("a", f"/demo/keys/{k}/inc", f"p2-{k}") for k in owned_by_c}
failed = [k for k, (s, _) in p3.items() if s != 200]
doubled = [k for k, (s, b) in retry.items() if s == 200 and b["value"] != p2[k][1]["value"]]
final = {k: req("a", f"/demo/keys/{k}/inc", f"p4-{k}") for k in keys}
wrong = [k for k, (s, b) in final.items() if s != 200 or b["value"] != 4]
summary = {"keys_written_by_new_then_failed_over": len(owned_by_c),
    "p3_failed_keys": len(failed), "p3_example": p3[failed[0]] if failed else None,
    "p2_retries_not_200": sum(1 for s, _ in retry.values() if s != 200),
    "p2_retries_applied_twice": len(doubled), "final_not_exactly_4": len(wrong)}
print(json.dumps(summary))
for p in procs.values(): p.kill()
sys.exit(1 if failed or doubled or wrong or summary["p2_retries_not_200"] else 0)

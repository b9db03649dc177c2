#!/usr/bin/env python3
"""Stdlib-only parts of bench/slow_readers.sh (loopback only, every wait bounded).

  config --dir D --port P --admin A --upstream U --keys N --send-timeout S
                         write D/keygate.toml (N keys over 1,000 clients when
                         N >= 1000, else one client) and D/key.txt (a valid key)
  upstream --port P      HTTP/1.1 server: /big answers 10 MiB, anything else "ok"
  slow ...               open --conns connections that ask for /big and never
                         read; print keygate's RSS growth, and how long until
                         its keygate_connections gauge is back to 0
  reloads ...            --n reloads (SIGHUP), with --hold: a kept-alive
                         connection opened before each; print RSS after
  latency ...            keep-alive load for --duration s with a SIGHUP every
                         --reload-every s (0: none); print p50/p99/max in ms
"""

import argparse
import asyncio
import hashlib
import os
import signal
import socket
import sys
import time
import uuid

BIG = 10 * 1024 * 1024


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def cmd_config(a):
    key = str(uuid.uuid4())
    clients = max(1, min(1000, a.keys))
    per = max(1, a.keys // clients)
    with open(os.path.join(a.dir, "key.txt"), "w") as f:
        f.write(key + "\n")
    with open(os.path.join(a.dir, "keygate.toml"), "w") as f:
        f.write('[listen]\naddress = "127.0.0.1:%d"\nsend_timeout = "%s"\n' % (a.port, a.send_timeout))
        f.write('idle_timeout = "10m"\nmax_connections = 20000\n\n')
        f.write('[admin]\naddress = "127.0.0.1:%d"\n\n' % a.admin)
        f.write('[upstreams.app]\nservers = ["http://127.0.0.1:%d"]\n\n' % a.upstream)
        f.write('[[routes]]\nname = "all"\npath = "/"\nupstream = "app"\n\n')
        f.write('[rate_limit]\nper_second = 1000000\nburst = 1000000\n\n')
        for i in range(clients):
            hashes = [sha(key)] if i == 0 else []
            hashes += [sha(str(uuid.uuid4())) for _ in range(per - len(hashes))]
            keys = ", ".join('{ hash = "sha256:%s" }' % h for h in hashes)
            f.write('[clients.c%04d]\nroutes = ["*"]\nkeys = [ %s ]\n\n' % (i, keys))


async def serve_one(reader, writer):
    chunk = b"x" * 65536
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.split(b" ", 2)[1].startswith(b"/big"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
                for _ in range(BIG // len(chunk)):
                    writer.write(chunk)
                    await writer.drain()
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def cmd_upstream(a):
    async def main():
        server = await asyncio.start_server(serve_one, "127.0.0.1", a.port, backlog=4096)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def metric(admin, name):
    with socket.create_connection(("127.0.0.1", admin), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
    for line in data.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def request(key, path):
    return ("GET %s HTTP/1.1\r\nHost: bench\r\nX-API-Key: %s\r\n\r\n" % (path, key)).encode()


def cmd_slow(a):
    key = open(a.key).read().strip()
    base = rss_mib(a.pid)
    socks = []
    for _ in range(a.conns):
        s = socket.create_connection(("127.0.0.1", a.port), timeout=10)
        s.sendall(request(key, "/big"))
        socks.append(s)  # never read
    opened = time.monotonic()
    peak = base
    while time.monotonic() - opened < a.send_timeout * 0.8:
        peak = max(peak, rss_mib(a.pid))
        time.sleep(0.2)
    open_before = metric(a.admin, "keygate_connections")
    closed_after = None
    while time.monotonic() - opened < a.send_timeout * 3 + 30:
        peak = max(peak, rss_mib(a.pid))
        if metric(a.admin, "keygate_connections") == 0:
            closed_after = time.monotonic() - opened
            break
        time.sleep(0.2)
    print("slow: %d connections, RSS %.1f -> peak %.1f MiB (growth %.1f MiB), "
          "%d open at 0.8 x send_timeout, all closed after %s s (send_timeout %s s)"
          % (a.conns, base, peak, peak - base, open_before,
             "%.1f" % closed_after if closed_after else "NEVER", a.send_timeout))
    for s in socks:
        s.close()
    return 0 if closed_after else 1


def reloads_done(log):
    with open(log, errors="replace") as f:
        return f.read().count("configuration reloaded")


def hold_one(port, key):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request(key, "/"))
    got = b""
    while not got.endswith(b"ok\n"):
        more = s.recv(4096)
        if not more:
            raise RuntimeError("closed")
        got += more
    return s


def cmd_reloads(a):
    key = open(a.key).read().strip()
    held = []
    before = rss_mib(a.pid)
    for i in range(a.n):
        if a.hold:
            held.append(hold_one(a.port, key))
        os.kill(a.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while reloads_done(a.log) < i + 1:
            if time.monotonic() > deadline:
                print("reloads: reload %d not done within 60 s" % (i + 1))
                return 1
            time.sleep(0.05)
    time.sleep(a.settle)
    print("reloads: %d reloads %s: RSS %.1f -> %.1f MiB"
          % (a.n, "with a held connection before each" if a.hold else "without connections",
             before, rss_mib(a.pid)))
    return 0


async def load_conn(port, req, until, lat):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while time.monotonic() < until:
        t = time.monotonic()
        writer.write(req)
        await asyncio.wait_for(reader.readuntil(b"ok\n"), 30)
        lat.append(time.monotonic() - t)
    writer.close()


async def reload_every(pid, every, until):
    n = 0
    while every > 0 and time.monotonic() + every < until:
        await asyncio.sleep(every)
        os.kill(pid, signal.SIGHUP)
        n += 1
    return n


def cmd_latency(a):
    key = open(a.key).read().strip()

    async def main():
        lat = []
        until = time.monotonic() + a.duration
        conns = [load_conn(a.port, request(key, "/"), until, lat) for _ in range(a.conns)]
        results = await asyncio.gather(reload_every(a.pid, a.reload_every, until), *conns)
        return lat, results[0]

    lat, reloads = asyncio.run(main())
    lat.sort()
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] * 1000
    print("latency: %d requests, %d reloads: p50 %.2f ms, p99 %.2f ms, max %.2f ms"
          % (len(lat), reloads, pct(50), pct(99), lat[-1] * 1000))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    for name in ("port", "admin", "upstream", "keys"):
        c.add_argument("--" + name, type=int, required=True)
    c.add_argument("--dir", required=True)
    c.add_argument("--send-timeout", default="60s")
    c.set_defaults(fn=cmd_config)
    u = sub.add_parser("upstream")
    u.add_argument("--port", type=int, required=True)
    u.set_defaults(fn=cmd_upstream)
    for name, fn in (("slow", cmd_slow), ("reloads", cmd_reloads), ("latency", cmd_latency)):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--admin", type=int)
        s.add_argument("--pid", type=int, required=True)
        s.add_argument("--key", required=True)
        s.add_argument("--log")
        s.add_argument("--conns", type=int, default=1000)
        s.add_argument("--send-timeout", type=float, default=10)
        s.add_argument("--n", type=int, default=8)
        s.add_argument("--hold", action="store_true")
        s.add_argument("--settle", type=float, default=12)
        s.add_argument("--duration", type=float, default=10)
        s.add_argument("--reload-every", type=float, default=1)
        s.set_defaults(fn=fn)
    a = p.parse_args()
    sys.exit(a.fn(a) or 0)


if __name__ == "__main__":
    main()

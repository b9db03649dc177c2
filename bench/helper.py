#!/usr/bin/env python3
"""Stdlib-only helpers for bench/run.sh.

  ports N                      print N free loopback TCP ports, one per line
  gen DIR                      write keys and configs fragments into DIR:
                                 keys.txt      1,000 valid plain keys (client c0001..c1000)
                                 invalid.txt   1,000 unknown keys
                                 keys.map      nginx `map` entries  "key" client;
                                 clients.toml  keygate [clients.*] tables (sha256 hashes)
                                 clients-100k.toml  100,000 keys across 1,000 clients
                                 keys-100k.txt, keys-100k.map  their plain keys, nginx map
                                 jwt.toml      [[jwt]] issuers: HS256 "bench" (token.txt)
                                               and ES256 "bench-es" (jwks-es.json)
                                 tokens-es.txt --cold-tokens ES256 tokens, each new
                                 grpc-request.bin  one length-prefixed gRPC message
  percentiles FILE...          p50 and p99 (µs) of h2load --log-file files
  idle --port P [--tls] ...    open N keep-alive connections (one request each),
                               then print the summed VmRSS of --pids
  startup --port P -- CMD...   run CMD, time exec -> port accepting, print
                               start-up ms and VmRSS, then stop CMD (SIGTERM)
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid


def cmd_ports(args):
    socks = []
    for _ in range(args.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    for s in socks:
        print(s.getsockname()[1])
    for s in socks:
        s.close()


def _client_table(name, hashes):
    keys = ", ".join('{ hash = "sha256:%s" }' % h for h in hashes)
    return '[clients.%s]\nroutes = ["*"]\nkeys = [ %s ]\n\n' % (name, keys)


def _sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


def cmd_gen(args):
    d = args.dir
    os.makedirs(d, exist_ok=True)
    valid = [str(uuid.uuid4()) for _ in range(args.clients)]
    invalid = [str(uuid.uuid4()) for _ in range(args.clients)]
    with open(os.path.join(d, "keys.txt"), "w") as f:
        f.write("".join(k + "\n" for k in valid))
    with open(os.path.join(d, "invalid.txt"), "w") as f:
        f.write("".join(k + "\n" for k in invalid))
    with open(os.path.join(d, "keys.map"), "w") as f:
        for i, k in enumerate(valid, 1):
            f.write('"%s" c%04d;\n' % (k, i))
    with open(os.path.join(d, "clients.toml"), "w") as f:
        for i, k in enumerate(valid, 1):
            f.write(_client_table("c%04d" % i, [_sha(k)]))
    _token_material(d)
    _es256_tokens(d, args.cold_tokens, args.clients)
    with open(os.path.join(d, "grpc-request.bin"), "wb") as f:
        f.write(b"\x00\x00\x00\x00\x0a\x0a\x08bench-01")  # field 1 = "bench-01"
    per = args.big_keys // args.clients
    with open(os.path.join(d, "clients-100k.toml"), "w") as f, \
            open(os.path.join(d, "keys-100k.txt"), "w") as plain, \
            open(os.path.join(d, "keys-100k.map"), "w") as nginx_map:
        for i in range(1, args.clients + 1):
            keys = [str(uuid.uuid4()) for _ in range(per)]
            plain.write("".join(k + "\n" for k in keys))
            nginx_map.write("".join('"%s" c%04d;\n' % (k, i) for k in keys))
            f.write(_client_table("c%04d" % i, [_sha(k) for k in keys]))


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _token_material(d):
    """An HS256 issuer for keygate (jwt.toml, its secret in jwt.secret) and
    one token for client c0001, valid for a day (token.txt)."""
    secret = _b64url(os.urandom(32))
    with open(os.path.join(d, "jwt.secret"), "w") as f:
        f.write(secret)
    with open(os.path.join(d, "jwt.toml"), "w") as f:
        f.write('[[jwt]]\nissuer = "bench"\naudiences = ["bench"]\nalgorithms = ["HS256"]\n'
                'secret_env = "BENCH_JWT_SECRET"\n')
    now = int(time.time())
    head = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64url(json.dumps({"iss": "bench", "aud": "bench", "sub": "c0001", "iat": now,
                               "exp": now + 86400}).encode())
    sig = hmac.new(secret.encode(), ("%s.%s" % (head, body)).encode(), hashlib.sha256).digest()
    with open(os.path.join(d, "token.txt"), "w") as f:
        f.write("%s.%s.%s\n" % (head, body, _b64url(sig)))


def _es256_tokens(d, count, clients):
    """An ES256 issuer "bench-es" (its public key in jwks-es.json, appended to
    jwt.toml) and COUNT distinct tokens of clients c0001.. in turn, valid for a
    day (tokens-es.txt). Needs the `cryptography` module; without it, no tokens."""
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError:
        open(os.path.join(d, "tokens-es.txt"), "w").close()
        return
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "kid": "es-1", "alg": "ES256",
           "x": _b64url(pub.x.to_bytes(32, "big")), "y": _b64url(pub.y.to_bytes(32, "big"))}
    with open(os.path.join(d, "jwks-es.json"), "w") as f:
        json.dump({"keys": [jwk]}, f)
    with open(os.path.join(d, "jwt.toml"), "a") as f:
        f.write('\n[[jwt]]\nissuer = "bench-es"\naudiences = ["bench"]\nalgorithms = ["ES256"]\n'
                'jwks_file = "%s"\n' % os.path.join(d, "jwks-es.json"))
    head = _b64url(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "es-1"}).encode())
    now = int(time.time())
    with open(os.path.join(d, "tokens-es.txt"), "w") as f:
        for i in range(count):
            body = _b64url(json.dumps({"iss": "bench-es", "aud": "bench", "sub": "c%04d" % (i % clients + 1),
                                       "iat": now, "exp": now + 86400, "jti": i}).encode())
            signed = ("%s.%s" % (head, body)).encode()
            r, sig_s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + sig_s.to_bytes(32, "big")
            f.write("%s.%s.%s\n" % (head, body, _b64url(sig)))


def cmd_percentiles(args):
    lat = []
    for path in args.files:
        with open(path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3:
                    lat.append(int(parts[2]))
    if not lat:
        print("0 0")
        return
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(len(lat) * p / 100))]

    print("%d %d" % (pct(50), pct(99)))


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def _open_one(port, ctx, request, sem, conns):
    async with sem:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx,
                server_hostname="localhost" if ctx else None),
            timeout=30)
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await asyncio.wait_for(reader.readexactly(length), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
        conns.append((reader, writer))


async def _idle(args):
    ctx = None
    if args.tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    request = ("GET / HTTP/1.1\r\nHost: localhost\r\nX-API-Key: %s\r\n\r\n"
               % args.key).encode()
    pids = [int(p) for p in args.pids.split(",")]
    sem = asyncio.Semaphore(args.concurrency)
    conns = []
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(_open_one(args.port, ctx, request, sem, conns)
          for _ in range(args.count)),
        return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    open_s = time.monotonic() - t0
    await asyncio.sleep(args.settle)
    rss = rss_kib(pids)
    # A connection the server has closed meanwhile shows EOF on its reader.
    still_open = sum(1 for r, _ in conns if not r.at_eof())
    for _, w in conns:
        w.close()
    print("opened=%d open=%d failed=%d rss_kib=%d open_s=%.1f"
          % (len(conns), still_open, len(failures), rss, open_s))
    if failures:
        print("first failure: %r" % (failures[0],), file=sys.stderr)


def cmd_idle(args):
    asyncio.run(asyncio.wait_for(_idle(args), timeout=args.timeout))


def cmd_startup(args):
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    out = open(args.log, "w") if args.log else subprocess.DEVNULL
    env = dict(os.environ)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
    try:
        deadline = t0 + args.timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", args.port), 1):
                    break
            except OSError:
                if proc.poll() is not None:
                    sys.exit("startup: process exited with %s" % proc.returncode)
                if time.monotonic() > deadline:
                    sys.exit("startup: port %d not accepting after %ss"
                             % (args.port, args.timeout))
                time.sleep(0.002)
        ms = (time.monotonic() - t0) * 1000
        print("startup_ms=%.0f rss_kib=%d" % (ms, rss_kib([proc.pid])))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s.set_defaults(fn=cmd_ports)
    s = sub.add_parser("gen")
    s.add_argument("dir")
    s.add_argument("--clients", type=int, default=1000)
    s.add_argument("--big-keys", type=int, default=100000)
    s.add_argument("--cold-tokens", type=int, default=20000)
    s.set_defaults(fn=cmd_gen)
    s = sub.add_parser("percentiles")
    s.add_argument("files", nargs="+")
    s.set_defaults(fn=cmd_percentiles)
    s = sub.add_parser("idle")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--tls", action="store_true")
    s.add_argument("--key", required=True)
    s.add_argument("--pids", required=True, help="comma-separated")
    s.add_argument("--count", type=int, default=10000)
    s.add_argument("--concurrency", type=int, default=50)
    s.add_argument("--settle", type=float, default=2.0)
    s.add_argument("--timeout", type=float, default=180.0)
    s.set_defaults(fn=cmd_idle)
    s = sub.add_parser("startup")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--log")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_startup)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()

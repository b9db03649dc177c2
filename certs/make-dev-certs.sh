#!/usr/bin/env bash
# Development certificates for keygate. NOT for production (see certs/README.md).
#
# Writes into certs/dev/ (or --out DIR):
#   ca.crt, ca.key                       local dev CA            -> listen.tls.client_ca
#   server.crt, server.key               localhost, 127.0.0.1    -> listen.tls.cert / listen.tls.key
#   client-billing.crt/.key              CN=billing, signed by ca -> a trusted mTLS client
#   other-ca.crt, other-ca.key           a second, unrelated CA
#   client-other.crt/.key                CN=other, signed by other-ca -> must be refused
#
# All keys are ECDSA P-256 (PKCS#8 PEM), all certificates last 825 days.
# Refuses to overwrite existing files unless --force.
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: certs/make-dev-certs.sh [--force] [--out DIR]

  --force    overwrite existing certificates in DIR
  --out DIR  output folder (default: certs/dev next to this script)

example:
  certs/make-dev-certs.sh && keygate check -c config/mtls.toml
USAGE
}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out="$here/dev"
force=0
while (($#)); do
  case $1 in
    --force) force=1 ;;
    --out) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; out=$2; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "make-dev-certs: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

command -v openssl >/dev/null || { echo "make-dev-certs: openssl not found" >&2; exit 1; }

days=825
files=(ca.crt ca.key server.crt server.key client-billing.crt client-billing.key
  other-ca.crt other-ca.key client-other.crt client-other.key)

if ((!force)); then
  for f in "${files[@]}"; do
    if [[ -e $out/$f ]]; then
      echo "make-dev-certs: $out/$f exists; not overwriting (use --force)" >&2
      exit 1
    fi
  done
fi

# Build everything in a scratch folder, then move it into place: a failure
# never leaves a half-written set behind.
mkdir -p "$out"
work=$(mktemp -d "$out/.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Our own openssl config, so the result does not depend on the system's openssl.cnf.
cat >"$work/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
[ca_ext]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

newkey() { (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/$1.key" 2>/dev/null); }
serial() { echo "0x$(openssl rand -hex 16)"; }

# make_ca NAME "SUBJECT"
make_ca() {
  newkey "$1"
  openssl req -new -x509 -config "$work/openssl.cnf" -extensions ca_ext \
    -key "$work/$1.key" -subj "$2" -days "$days" -sha256 -set_serial "$(serial)" \
    -out "$work/$1.crt"
}

# make_leaf NAME "SUBJECT" CA EXTENSIONS
make_leaf() {
  newkey "$1"
  openssl req -new -config "$work/openssl.cnf" -key "$work/$1.key" -subj "$2" -out "$work/$1.csr"
  openssl x509 -req -in "$work/$1.csr" -CA "$work/$3.crt" -CAkey "$work/$3.key" \
    -set_serial "$(serial)" -days "$days" -sha256 \
    -extfile "$work/openssl.cnf" -extensions "$4" -out "$work/$1.crt" 2>/dev/null
  rm -f "$work/$1.csr"
}

# Client subjects are a single CN so they match tls_subjects = ["CN=..."] exactly.
make_ca ca "/CN=keygate dev CA"
make_leaf server "/CN=localhost" ca server_ext
make_leaf client-billing "/CN=billing" ca client_ext
make_ca other-ca "/CN=keygate unrelated dev CA"
make_leaf client-other "/CN=other" other-ca client_ext

# Check what we made before handing it out.
openssl verify -CAfile "$work/ca.crt" -purpose sslserver "$work/server.crt" >/dev/null
openssl verify -CAfile "$work/ca.crt" -purpose sslclient "$work/client-billing.crt" >/dev/null
openssl verify -CAfile "$work/other-ca.crt" -purpose sslclient "$work/client-other.crt" >/dev/null
if openssl verify -CAfile "$work/ca.crt" "$work/client-other.crt" >/dev/null 2>&1; then
  echo "make-dev-certs: client-other.crt unexpectedly chains to ca.crt" >&2
  exit 1
fi

for f in "${files[@]}"; do mv -f "$work/$f" "$out/$f"; done
chmod 0644 "$out"/*.crt
chmod 0600 "$out"/*.key

cat <<MSG
make-dev-certs: wrote ${#files[@]} files to $out (valid $days days)
  server:  server.crt / server.key   (DNS:localhost, IP:127.0.0.1)
  mTLS CA: ca.crt                    (client_ca)
  clients: client-billing.crt/.key   (CN=billing, trusted)
           client-other.crt/.key     (CN=other, signed by other-ca: refused)
try:  curl --cacert $out/ca.crt --cert $out/client-billing.crt --key $out/client-billing.key \\
        -H "X-API-Key: \$KEY" https://localhost:8443/
MSG

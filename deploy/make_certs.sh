#!/usr/bin/env bash
# Certificates and keys for a TLS SuperLink with SuperNode authentication (docs/deploy.md).
#
# Makes, in OUT_DIR:
#   ca.crt, ca.key                 a private CA (give ca.crt to every SuperNode and to the
#                                  machine that runs `flwr`; keep ca.key offline)
#   server.pem, server.key         the SuperLink's certificate, signed by the CA, with every
#                                  host of -H as a subjectAltName (IP or DNS name)
#   supernode-<i>, supernode-<i>.pub   for i = 0..N-1: one ECDSA P-384 key pair per SuperNode
#                                  in OpenSSH format (what `flower-supernode
#                                  --auth-supernode-private-key` reads and what
#                                  `flwr supernode register` takes)
#
# Flower (1.42 here) reads no public-key list file on the SuperLink any more
# (`--auth-list-public-keys` now exits with an error): once the SuperLink runs, each
# public key is registered with `flwr supernode register supernode-<i>.pub CONNECTION`.
#
# Needs openssl and ssh-keygen only; nothing is downloaded.
set -euo pipefail

usage() {
    cat >&2 <<'EOF'
usage: deploy/make_certs.sh [-o OUT_DIR] [-n NUM_SUPERNODES] [-H HOSTS] [-f]
  -o OUT_DIR         where to write (default: ./certificates)
  -n NUM_SUPERNODES  SuperNode key pairs to make, >= 0 (default: 2)
  -H HOSTS           comma-separated SuperLink hosts for the certificate's SANs
                     (IPs or DNS names; default: 127.0.0.1,localhost)
  -f                 overwrite files already in OUT_DIR
EOF
    exit 2
}

out=./certificates
num=2
hosts=127.0.0.1,localhost
force=0
while getopts ":o:n:H:fh" opt; do
    case $opt in
        o) out=$OPTARG ;;
        n) num=$OPTARG ;;
        H) hosts=$OPTARG ;;
        f) force=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 0 ]] || usage
[[ $num =~ ^[0-9]+$ ]] || { echo "make_certs.sh: -n must be a whole number (got '$num')" >&2; usage; }
[[ -n $hosts && $hosts != *,, && $hosts != ,* && $hosts != *, ]] || {
    echo "make_certs.sh: -H must be a comma-separated list of hosts (got '$hosts')" >&2; usage; }
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "make_certs.sh: $tool not found" >&2; exit 1; }
done

mkdir -p "$out"
if [[ $force -eq 0 && -e $out/ca.crt ]]; then
    echo "make_certs.sh: $out/ca.crt exists; use -f to overwrite" >&2
    exit 1
fi

san=()
IFS=, read -ra host_list <<<"$hosts"
for h in "${host_list[@]}"; do
    if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then san+=("IP:$h"); else san+=("DNS:$h"); fi
done
san_line=$(IFS=,; echo "${san[*]}")

umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# CA: self-signed, P-384, 10 years.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -sha384 -days 3650 \
    -subj "/CN=fedmoe-sim CA" -keyout "$out/ca.key" -out "$out/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" 2>/dev/null

# SuperLink server certificate, 1 year, every host as a SAN (clients check the SAN, not the CN).
cat >"$tmp/server.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san_line
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EOF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:secp384r1 -nodes -sha384 \
    -subj "/CN=${host_list[0]}" -keyout "$out/server.key" -out "$tmp/server.csr" 2>/dev/null
openssl x509 -req -in "$tmp/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha384 -days 365 -extfile "$tmp/server.ext" -out "$out/server.pem" 2>/dev/null

# SuperNode authentication keys: ECDSA P-384, OpenSSH format, no passphrase.
for ((i = 0; i < num; i++)); do
    rm -f "$out/supernode-$i" "$out/supernode-$i.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "supernode-$i" -f "$out/supernode-$i"
done
chmod 644 "$out/ca.crt" "$out/server.pem"
[[ $num -eq 0 ]] || chmod 644 "$out"/supernode-*.pub

echo "wrote $out: ca.crt ca.key server.pem server.key (SAN $san_line), $num SuperNode key pair(s)"

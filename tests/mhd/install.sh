#!/usr/bin/env bash
# Installs the independent FHIR R4 / IHE MHD test kit (tests/mhd) outside the repository, in
# ${MEDGATE_TEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/medgate-test-tools}:
#   venv/        Python venv with the packages of requirements.txt (pip --require-hashes --no-deps)
#   npm/         the npm package that carries HL7's FHIR R4 4.0.1 definitions (npm ci, lockfile
#                with sha512 integrity)
#   r4/          the compact index validate.py builds from those definitions
#   stamp        hash of every input above; when it matches, the script returns at once.
# Idempotent: run it as often as you like. Prints nothing when the kit is already installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${MEDGATE_TEST_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/medgate-test-tools}"

stamp_now() {
  cat "$here/requirements.txt" "$here/npm/package.json" "$here/npm/package-lock.json" \
    "$here/validate.py" | sha256sum | cut -d' ' -f1
}
want="$(stamp_now)"
if [ -f "$cache/stamp" ] && [ "$(cat "$cache/stamp")" = "$want" ] \
  && [ -x "$cache/venv/bin/python" ] && [ -f "$cache/r4/index.json" ]; then
  exit 0
fi

# Debian packages: Debian's python3 with venv (the venv is made from /usr/bin/python3, whatever
# python3 comes first on PATH), and npm for the definitions package.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "mhd kit: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

start=$(date +%s)
echo "mhd kit: installing into $cache" >&2
mkdir -p "$cache"
rm -f "$cache/stamp"
if [ ! -x "$cache/venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$cache/venv"
fi
"$cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --require-hashes --no-deps --only-binary=:all: -r "$here/requirements.txt"

mkdir -p "$cache/npm"
cp "$here/npm/package.json" "$here/npm/package-lock.json" "$cache/npm/"
(cd "$cache/npm" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

"$cache/venv/bin/python" "$here/validate.py" --build-index
echo "$want" >"$cache/stamp"
echo "mhd kit: installed in $(( $(date +%s) - start )) s" >&2

#!/usr/bin/env bash
# Ensure the real `helm` binary is available and print its path (and nothing else) on stdout.
#
# Helm is built once from source with `go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION` into a
# per-user cache folder outside the repository:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/contacts-streams/helm/<version>/bin/helm
#
# A second run finds the binary and only prints its path. Build progress and errors go to stderr,
# so callers can do `HELM="$(scripts/helm.sh)"`.
#
# Environment:
#   HELM_VERSION  helm v3 release to build (default below; needs the Go version its go.mod names)
#   GO            Go toolchain to use (default: `go` on PATH, else /usr/local/go/bin/go)
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.21.4}"

die() { echo "scripts/helm.sh: $*" >&2; exit 1; }

cache_dir="${XDG_CACHE_HOME:-${HOME:?HOME is not set}/.cache}/contacts-streams/helm/${HELM_VERSION}"
helm_bin="${cache_dir}/bin/helm"

if [[ -x "${helm_bin}" ]]; then
    echo "${helm_bin}"
    exit 0
fi

go_bin="${GO:-}"
if [[ -z "${go_bin}" ]]; then
    if command -v go >/dev/null 2>&1; then
        go_bin="$(command -v go)"
    elif [[ -x /usr/local/go/bin/go ]]; then
        go_bin=/usr/local/go/bin/go
    else
        die "no Go toolchain found (set GO=/path/to/go or put go on PATH); it is needed to build helm ${HELM_VERSION}"
    fi
fi
[[ -x "${go_bin}" ]] || die "GO=${go_bin} is not an executable"

mkdir -p "${cache_dir}"

# Serialize concurrent first runs (parallel test workers, make -j): one builds, the others wait
# and then find the binary.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${cache_dir}/.lock"
    flock 9
    if [[ -x "${helm_bin}" ]]; then
        echo "${helm_bin}"
        exit 0
    fi
fi

# Build into a scratch GOBIN and move the result into place, so an interrupted build never leaves
# a half-written binary at the path the fast path trusts.
scratch="$(mktemp -d "${cache_dir}/.build.XXXXXX")"
trap 'rm -rf "${scratch}"' EXIT

echo "scripts/helm.sh: building helm ${HELM_VERSION} with $("${go_bin}" version) (once; cached in ${cache_dir})" >&2
start=$(date +%s)
# CGO_ENABLED=0 as in helm's own release builds; the ldflag makes `helm version` report the tag.
if ! GOBIN="${scratch}" CGO_ENABLED=0 "${go_bin}" install \
        -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2; then
    die "go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} failed (see above; helm ${HELM_VERSION} needs the Go version named in its go.mod, and the Go module proxy must be reachable)"
fi
[[ -x "${scratch}/helm" ]] || die "go install succeeded but produced no ${scratch}/helm"
"${scratch}/helm" version --short >/dev/null 2>&1 || die "the built helm does not run: $("${scratch}/helm" version --short 2>&1 || true)"

mkdir -p "${cache_dir}/bin"
mv -f "${scratch}/helm" "${helm_bin}"
echo "scripts/helm.sh: built ${helm_bin} in $(( $(date +%s) - start ))s" >&2
echo "${helm_bin}"

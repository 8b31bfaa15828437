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
# Bump when the build recipe below changes: a binary built by an older recipe is rebuilt.
RECIPE=2
recipe_file="${cache_dir}/bin/.recipe"

built() { [[ -x "${helm_bin}" && -f "${recipe_file}" && "$(<"${recipe_file}")" == "${RECIPE}" ]]; }

if built; then
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
    if built; then
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

# Build it the way helm's release Makefile does, so this binary behaves like a downloaded one:
# besides the version, the release sets the default Kubernetes version that `helm template` and
# `helm lint` assume (.Capabilities.KubeVersion, chart kubeVersion checks) from the client-go
# module it is built with (client-go v0.X.Y -> Kubernetes 1.X). Without it that default is 1.20.
gomod="$(cd "${scratch}" && "${go_bin}" mod download -json "helm.sh/helm/v3@${HELM_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')" \
    || die "could not download helm.sh/helm/v3@${HELM_VERSION} from the Go module proxy"
[[ -f "${gomod}" ]] || die "helm.sh/helm/v3@${HELM_VERSION}: no go.mod found in the module download"
client_go="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p' "${gomod}" | head -n 1)"
[[ -n "${client_go}" ]] || die "helm.sh/helm/v3@${HELM_VERSION}: no k8s.io/client-go requirement in ${gomod}"
read -r cg_major cg_minor <<<"${client_go}"
k8s_major=$((cg_major + 1))
k8s_minor="${cg_minor}"

ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X ${pkg}.k8sVersionMajor=${k8s_major} -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done

# CGO_ENABLED=0 and -trimpath as in helm's own release builds.
if ! GOBIN="${scratch}" CGO_ENABLED=0 "${go_bin}" install -trimpath -ldflags "${ldflags}" \
        "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" >&2; then
    die "go install helm.sh/helm/v3/cmd/helm@${HELM_VERSION} failed (see above; helm ${HELM_VERSION} needs the Go version named in its go.mod, and the Go module proxy must be reachable)"
fi
[[ -x "${scratch}/helm" ]] || die "go install succeeded but produced no ${scratch}/helm"
"${scratch}/helm" version --short >/dev/null 2>&1 || die "the built helm does not run: $("${scratch}/helm" version --short 2>&1 || true)"

mkdir -p "${cache_dir}/bin"
rm -f "${recipe_file}"
mv -f "${scratch}/helm" "${helm_bin}"
echo "${RECIPE}" >"${recipe_file}"
echo "scripts/helm.sh: built ${helm_bin} in $(( $(date +%s) - start ))s" >&2
echo "${helm_bin}"

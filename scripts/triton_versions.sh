#!/usr/bin/env bash
# Runs tests/kernels (interpreter tests and the ahead-of-time compile report) under each Triton version given,
# default: 3.6.0 3.7.1, the latest 3.8.x and 3.9.x (the installed one when it is a 3.9).
#
#   bash scripts/triton_versions.sh [VERSION ...]      VERSION: X.Y.Z, or X.Y for the latest X.Y.Z
#
# Each version gets a virtual environment .venvs/triton-<version>, made with --system-site-packages so that it
# reuses the installed torch and the editable ukd with its built extension (run scripts/install.sh first); only
# triton is installed into it, shadowing the system one. Existing environments are reused. One summary line per
# version; the exit status is non-zero when any version fails. PYTHON picks the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

die() {
    echo "triton_versions.sh: $*" >&2
    exit 2
}

# The newest released X.Y.Z of the series X.Y, from the package index; empty when the index cannot say.
latest_of() {
    "$PYTHON" -m pip index versions triton 2>/dev/null |
        sed -n 's/^Available versions: //p' | tr ',' '\n' | tr -d ' ' | grep -m1 "^${1//./\\.}\.[0-9]*$"
}

# X.Y.Z stays; X.Y becomes the latest X.Y.Z, or the pip specifier X.Y.* when the index cannot be listed.
resolve() {
    if [[ $1 =~ ^[0-9]+\.[0-9]+$ ]]; then
        local found
        found=$(latest_of "$1")
        echo "${found:-$1.*}"
    else
        echo "$1"
    fi
}

"$PYTHON" -c "import torch, ukd" 2>/dev/null || die "torch and ukd must be importable by $PYTHON (run scripts/install.sh)"

# the defaults span ukd_kernels.SUPPORTED_TRITON: the versions torch pins (2.10/2.11: 3.6.0, 2.12/2.13: 3.7.1),
# then the latest of each newer minor, the newest minor as installed when it is installed
newest_minor=3.9
if [ $# -eq 0 ]; then
    newest=$newest_minor
    installed=$("$PYTHON" -c "import triton; print(triton.__version__)" 2>/dev/null || true)
    [[ $installed == "$newest_minor".* ]] && newest=${installed%%+*}
    set -- 3.6.0 3.7.1 3.8 "$newest"
fi
versions=()
for v in "$@"; do
    [[ $v =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]] || die "not a Triton version: '$v' (expected X.Y.Z or X.Y)"
    versions+=("$(resolve "$v")")
done

# Whether the triton version found matches the requested one (X.Y.Z, or X.Y.* for any X.Y.Z).
matches() {
    if [[ $1 == *'*' ]]; then [[ $2 == "${1%\*}"* ]]; else [ "$2" = "$1" ]; fi
}

# Whole seconds from $1 to $2 (default: now), both $EPOCHREALTIME values.
seconds() {
    awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN { printf "%.0f", b - a }'
}

# "N word" counts of pytest's last summary line, e.g. `count passed "$line"`.
count() {
    grep -oE "[0-9]+ $1" <<<"$2" | grep -oE '^[0-9]+' || echo 0
}

summary=()
status=0
for spec in "${versions[@]}"; do
    name=${spec%.\*}
    venv=.venvs/triton-$name
    log=$venv/pytest.log
    start=$EPOCHREALTIME
    if [ ! -x "$venv/bin/python" ]; then
        "$PYTHON" -m venv --system-site-packages "$venv" || die "cannot create $venv"
    fi
    py=$venv/bin/python
    found=$("$py" -c "import triton; print(triton.__version__)" 2>/dev/null || true)
    if matches "$spec" "$found"; then
        echo "== triton $found: already in $venv"
    else
        # a version other than the system's goes into the venv; the system's own is simply found there
        echo "== triton $spec: installing into $venv"
        if ! "$py" -m pip install -q --disable-pip-version-check "triton==$spec"; then
            summary+=("triton $spec: pip install failed")
            status=1
            continue
        fi
        found=$("$py" -c "import triton; print(triton.__version__)" 2>/dev/null || true)
    fi
    if ! matches "$spec" "$found"; then
        summary+=("triton $spec: $venv imports triton '${found:-<none>}' instead")
        status=1
        continue
    fi
    where=$("$py" -c "import os, triton; print(os.path.dirname(triton.__file__))")
    echo "== triton $found ($where): python -m pytest tests/kernels"
    tests_start=$EPOCHREALTIME
    "$py" -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    last=$(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$log" | tail -n1)
    verdict=ok
    [ "$rc" -eq 0 ] || verdict="FAILED (pytest exit $rc; log $log)"
    summary+=("$(printf 'triton %-8s %3d passed %3d failed %3d errors  %4ss (setup %ss, tests %ss)  %s' "$found" \
        "$(count passed "$last")" "$(count failed "$last")" "$(count error "$last")" "$(seconds "$start")" \
        "$(seconds "$start" "$tests_start")" "$(seconds "$tests_start")" "$verdict")")
    [ "$rc" -eq 0 ] || status=1
done

echo
printf '%s\n' "${summary[@]}"
exit "$status"

# Sourced by .ci/run (as root, CI=true, on a fresh Debian machine) before `make test`.
# Installs and starts what the annotation-server tests need:
#   * PostgreSQL on 127.0.0.1, with a test database; exports RLHFKIT_TEST_POSTGRES_URL
#     (the PostgreSQL copies of the API tests skip only when that variable is unset);
#   * Debian's Chromium at /usr/bin/chromium, driven by Playwright (no browser download).
# Idempotent and quick on a machine where everything is already there.
# Runs under the caller's `set -euo pipefail`: every command here must succeed or be guarded.

_rlhfkit_services() {
    local need=()
    command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
    [ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
    if [ "${#need[@]}" -gt 0 ]; then
        echo "services.sh: installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi

    # Start the first PostgreSQL cluster (Debian creates "main" when the package is installed).
    local version cluster
    version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    cluster=$(pg_lsclusters -h | awk 'NR==1 {print $2}')
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -n | tail -1)
        cluster=main
        pg_createcluster "$version" "$cluster" >/dev/null
    fi
    local status
    status=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}')
    if [ "$status" != "online" ]; then
        pg_ctlcluster "$version" "$cluster" start
    fi
    local port
    port=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')

    local psql=(runuser -u postgres -- psql -p "$port" -qtA -v ON_ERROR_STOP=1)
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname='rlhfkit'")" != "1" ]; then
        "${psql[@]}" -c "CREATE ROLE rlhfkit LOGIN PASSWORD 'rlhfkit'"
    fi
    if [ "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname='rlhfkit_test'")" != "1" ]; then
        "${psql[@]}" -c "CREATE DATABASE rlhfkit_test OWNER rlhfkit"
    fi
    export RLHFKIT_TEST_POSTGRES_URL="postgresql+psycopg://rlhfkit:rlhfkit@127.0.0.1:${port}/rlhfkit_test"
    echo "services.sh: PostgreSQL $version/$cluster on 127.0.0.1:$port; chromium at /usr/bin/chromium"
}

_rlhfkit_services
unset -f _rlhfkit_services

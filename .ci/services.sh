#!/usr/bin/env bash
# Make sure the database servers the tests use answer on loopback:
#   PostgreSQL  127.0.0.1:5432  user postgres, no password (trust from loopback)
#   MariaDB     127.0.0.1:3306  user root, empty password, database test
#   Redis       127.0.0.1:6379
# For each: nothing is done if it already answers as the tests need. Otherwise it is started if
# installed, or installed with apt-get (Debian) and started; then configured as above if it is
# not yet; then waited for (SERVICES_TIMEOUT seconds, default 60). One status line per service
# goes to stdout, the commands' output to a log whose end is shown when a service fails. Exits
# non-zero if any service is still not usable. Called by .ci/run; installing and starting need
# root.
set -uo pipefail

timeout_s=${SERVICES_TIMEOUT:-60}
log=$(mktemp -t ci-services.XXXXXX.log)
apt_updated=0
summary="" # what was done to the current service, for its status line

# Run a command with its output going to the log.
logged() {
  echo "+ $*" >>"$log"
  "$@" >>"$log" 2>&1
}

# True once "$@" succeeds, trying every second for at most $timeout_s seconds.
wait_for() {
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      return 1
    fi
    sleep 1
  done
}

apt_install() {
  if ((!apt_updated)); then
    logged apt-get update || return 1
    apt_updated=1
  fi
  logged env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# -- PostgreSQL --------------------------------------------------------------------------------

pg_answers() { pg_isready -q -h 127.0.0.1 -p 5432 >/dev/null 2>&1; }
pg_logs_in() {
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atqc 'select 1' >/dev/null 2>&1
}
pg_installed() {
  command -v pg_ctlcluster >/dev/null && [ -n "$(ls -A /etc/postgresql 2>/dev/null)" ]
}
pg_cluster() { pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main "$1"; }

# Let user postgres in from loopback without a password: trust rules ahead of all others
# (pg_hba.conf is read top down, first match wins). Idempotent.
pg_trust_loopback() {
  local hba=$1 rules
  local rule='^host[[:space:]]+all[[:space:]]+postgres[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust'
  if grep -Eq "$rule" "$hba"; then
    return 0
  fi
  rules='# Added by .ci/services.sh: the tests log in as postgres over TCP without a password.\n'
  rules+='host    all    postgres    127.0.0.1/32    trust\n'
  rules+='host    all    postgres    ::1/128         trust'
  awk -v rules="$rules" '
    !done && /^[[:space:]]*(local|host)/ { print rules; done = 1 }
    { print }
    END { if (!done) print rules }
  ' "$hba" >"$hba.ci-new" && cat "$hba.ci-new" >"$hba" && rm -f "$hba.ci-new" # keeps owner, mode
}

ensure_postgresql() {
  if pg_answers && pg_logs_in; then
    summary="already running"
    return 0
  fi
  if ! pg_installed; then
    apt_install postgresql || { summary="apt-get install postgresql failed"; return 1; }
    summary+="installed, "
  fi
  if ! pg_answers; then
    logged pg_cluster start # errors show in the log; whether it answers is what counts
    summary+="started, "
  fi
  wait_for pg_answers || { summary+="not answering after ${timeout_s} s"; return 1; }
  if ! pg_logs_in; then
    pg_trust_loopback "/etc/postgresql/$(ls /etc/postgresql)/main/pg_hba.conf" &&
      logged pg_cluster reload || { summary+="configuring pg_hba.conf failed"; return 1; }
    summary+="trust for postgres@127.0.0.1 configured, "
  fi
  wait_for pg_logs_in || { summary+="user postgres cannot log in over TCP"; return 1; }
  summary+="running"
}

# -- MariaDB -----------------------------------------------------------------------------------

# What the tests need: root logs in over TCP without a password and can use database test.
mariadb_usable() { mariadb -uroot -h127.0.0.1 -D test -e 'select 1' >/dev/null 2>&1; }
# Up at all, through the socket or TCP (ping succeeds even when the login is refused).
mariadb_up() {
  mariadb-admin --silent ping >/dev/null 2>&1 ||
    mariadb-admin --silent -h127.0.0.1 ping >/dev/null 2>&1
}
mariadb_installed() { [ -x /usr/sbin/mariadbd ] && command -v mariadb >/dev/null; }

mariadb_start() {
  install -d -o mysql -g mysql /run/mysqld # socket and pid file; /run is emptied at boot
  # Started as root, the server switches to the mysql user itself (--user=mysql); --user mysql
  # tells start-stop-daemon to look for a running server of that user (--oknodo: then do nothing).
  start-stop-daemon --start --oknodo --background --user mysql --exec /usr/sbin/mariadbd -- \
    --user=mysql
}

# Root logs in with an empty password over TCP (keeping the socket login), database test exists.
# Run through the socket, as the system's root (unix_socket, as a fresh Debian install has it),
# or else over TCP (when root already logs in there and only the database is missing).
mariadb_configure() {
  local sql="
    ALTER USER root@localhost IDENTIFIED VIA mysql_native_password USING PASSWORD('')
      OR unix_socket;
    CREATE USER IF NOT EXISTS root@'127.0.0.1'
      IDENTIFIED VIA mysql_native_password USING PASSWORD('');
    GRANT ALL PRIVILEGES ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE IF NOT EXISTS test;"
  logged mariadb -uroot -e "$sql" || logged mariadb -uroot -h127.0.0.1 -e "$sql"
}

ensure_mariadb() {
  if mariadb_usable; then
    summary="already running"
    return 0
  fi
  if ! mariadb_installed; then
    apt_install mariadb-server || { summary="apt-get install mariadb-server failed"; return 1; }
    summary+="installed, "
  fi
  if ! mariadb_up; then
    logged mariadb_start
    summary+="started, "
  fi
  wait_for mariadb_up || { summary+="not answering after ${timeout_s} s"; return 1; }
  if ! mariadb_usable; then
    mariadb_configure || { summary+="configuring root and database test failed"; return 1; }
    summary+="root@127.0.0.1 and database test configured, "
  fi
  wait_for mariadb_usable || { summary+="root cannot use database test over TCP"; return 1; }
  summary+="running"
}

# -- Redis -------------------------------------------------------------------------------------

redis_answers() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
redis_installed() { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }

redis_start() {
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
}

ensure_redis() {
  if redis_answers; then
    summary="already running"
    return 0
  fi
  if ! redis_installed; then
    apt_install redis-server || { summary="apt-get install redis-server failed"; return 1; }
    summary+="installed, "
  fi
  if ! redis_answers; then
    logged redis_start
    summary+="started, "
  fi
  wait_for redis_answers || { summary+="not answering after ${timeout_s} s"; return 1; }
  summary+="running"
}

# -- main --------------------------------------------------------------------------------------

failed=0
for service in postgresql:5432 mariadb:3306 redis:6379; do
  name=${service%%:*}
  summary=""
  if "ensure_$name"; then
    printf '%-11s ok      %s (127.0.0.1:%s)\n' "$name" "$summary" "${service#*:}"
  else
    printf '%-11s FAILED  %s (127.0.0.1:%s)\n' "$name" "$summary" "${service#*:}"
    failed=1
  fi
done
if ((failed)); then
  echo "-- last lines of $log:" >&2
  tail -n 40 "$log" >&2
  ((EUID == 0)) || echo "(not running as root: installing and starting servers need root)" >&2
  exit 1
fi
rm -f "$log"

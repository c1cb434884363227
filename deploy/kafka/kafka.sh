#!/usr/bin/env bash
# Starts or stops a single-node Apache Kafka broker in KRaft mode for development and CI.
#
#   deploy/kafka/kafka.sh fetch                 download the broker jars into deploy/kafka/lib (cached in ~/.m2)
#   deploy/kafka/kafka.sh start PORT DATA_DIR   format DATA_DIR if new, start, wait until it serves
#   deploy/kafka/kafka.sh stop DATA_DIR         stop the broker started on DATA_DIR and wait for it
#
# The broker listens on 127.0.0.1:PORT (clients) and 127.0.0.1:PORT+1 (controller). Its settings
# suit one node: every internal topic has replication factor 1, so transactions work.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib="$here/lib"

die() { echo "kafka.sh: $*" >&2; exit 1; }

fetch() {
  if [ -f "$lib/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "maven (mvn) is needed to fetch the broker"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies >&2 || die "could not fetch the broker jars"
  touch "$lib/.complete"
}

write_config() {
  local port=$1 data=$2 controller=$(( $1 + 1 ))
  cat > "$data/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$data/logs
num.partitions=6
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=10485760
log.cleaner.backoff.ms=1000
PROPS
  cat > "$data/log4j.properties" <<PROPS
log4j.rootLogger=WARN, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$data/broker.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaServer=INFO
log4j.logger.kafka.server.BrokerServer=INFO
PROPS
}

java_run() {
  local data=$1; shift
  java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$data/log4j.properties" -cp "$lib/*" "$@"
}

wait_ready() {
  local port=$1 pid=$2 deadline=$(( SECONDS + 90 ))
  while (( SECONDS < deadline )); do
    kill -0 "$pid" 2>/dev/null || return 1
    if grep -q "Kafka Server started\|\[BrokerServer id=1\] Transition from STARTING to STARTED" "$3/broker.log" 2>/dev/null \
       && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

start() {
  local port=${1:?usage: kafka.sh start PORT DATA_DIR} data=${2:?usage: kafka.sh start PORT DATA_DIR}
  command -v java >/dev/null || die "java 17+ is needed to run the broker"
  fetch
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  if [ -f "$data/broker.pid" ] && kill -0 "$(cat "$data/broker.pid")" 2>/dev/null; then
    die "a broker is already running on $data (pid $(cat "$data/broker.pid"))"
  fi
  write_config "$port" "$data"
  if [ ! -f "$data/logs/meta.properties" ]; then
    java_run "$data" kafka.tools.StorageTool format --ignore-formatted \
      -t "$(java_run "$data" kafka.tools.StorageTool random-uuid)" -c "$data/server.properties" >/dev/null
  fi
  # Every partition keeps a few files open; test suites create thousands of partitions.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$data/log4j.properties" -cp "$lib/*" \
    kafka.Kafka "$data/server.properties" >"$data/stdout.log" 2>&1 &
  local pid=$!
  echo "$pid" > "$data/broker.pid"
  if ! wait_ready "$port" "$pid" "$data"; then
    tail -n 40 "$data/broker.log" "$data/stdout.log" >&2 || true
    kill "$pid" 2>/dev/null || true
    die "the broker did not become ready on 127.0.0.1:$port"
  fi
  echo "kafka ready on 127.0.0.1:$port (pid $pid, data $data)"
}

stop() {
  local data=${1:?usage: kafka.sh stop DATA_DIR}
  [ -f "$data/broker.pid" ] || { echo "no broker recorded in $data"; return 0; }
  local pid; pid=$(cat "$data/broker.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$data/broker.pid"
  echo "kafka stopped (pid $pid)"
}

case "${1:-}" in
  fetch) fetch ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: kafka.sh fetch | start PORT DATA_DIR | stop DATA_DIR" ;;
esac

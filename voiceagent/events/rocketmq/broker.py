"""A real Apache RocketMQ 5 on this machine: fetched from Maven Central, run on 127.0.0.1.

Two JVMs: the NameServer, and the Broker with the gRPC proxy inside it ("local" proxy mode).
Findings that shaped this (RocketMQ 5.3.3, JDK 17, 2 cores):
- the gRPC, proxy-remoting and HA ports ignore every bind setting and listen on all interfaces,
  so a tiny LD_PRELOAD library (loopback_bind.c, built with gcc) moves wildcard binds to loopback;
- gRPC clients need topics created up front, with their message type;
- the proxy's floors for invisible time (10 s) and long polling (5 s) are lowered to 1 s so tests
  and consumers can use short timeouts;
- the broker registers with the NameServer 5-16 s after it says it started: topic creation is
  retried until it succeeds, and start ends with a message round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from voiceagent.config import RocketMQSettings
from voiceagent.events.bus import MessageType, OutgoingMessage

PROBE_TOPIC = "voiceagent-probe"
SHIM_SOURCE = Path(__file__).with_name("loopback_bind.c")
JDK17_FLAGS = [
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
]
POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>voiceagent.local</groupId>
  <artifactId>rocketmq-server</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
  <build><pluginManagement><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId>
    <artifactId>maven-dependency-plugin</artifactId>
    <version>3.6.1</version>
  </plugin></plugins></pluginManagement></build>
</project>
"""


class BrokerError(RuntimeError):
    """Starting, stopping or fetching the local broker failed; the message says what to do."""


@dataclass(frozen=True)
class BrokerStatus:
    namesrv_pid: int | None
    broker_pid: int | None
    grpc_listening: bool

    @property
    def running(self) -> bool:
        return bool(self.namesrv_pid and self.broker_pid and self.grpc_listening)


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(f"//{address.split(';')[0]}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class LocalBroker:
    def __init__(
        self,
        settings: RocketMQSettings,
        topics: Mapping[str, MessageType],
        say: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.local = settings.local
        self.topics = {**topics, PROBE_TOPIC: "NORMAL"}
        self.say = say
        self.cache = Path(self.local.cache_dir).expanduser() / self.local.version
        self.data = Path(self.local.data_dir).expanduser().absolute()
        _, self.namesrv_port = _host_port(settings.namesrv, 9876)
        _, self.grpc_port = _host_port(settings.endpoints, 8081)

    # -- fetch -------------------------------------------------------------------------------

    @property
    def lib(self) -> Path:
        return self.cache / "lib"

    def fetch(self) -> Path:
        """Download the server jars once into the cache (idempotent); return the jar folder."""
        marker = self.cache / ".complete"
        if marker.exists():
            return self.lib
        if shutil.which("mvn") is None:
            raise BrokerError("Maven (mvn) is needed to fetch the RocketMQ server jars")
        self.cache.mkdir(parents=True, exist_ok=True)
        dependencies = "\n".join(
            f"    <dependency><groupId>org.apache.rocketmq</groupId><artifactId>rocketmq-{part}</artifactId>"
            f"<version>{self.local.version}</version></dependency>"
            for part in ("namesrv", "broker", "proxy", "tools")
        )
        (self.cache / "pom.xml").write_text(POM.format(dependencies=dependencies))
        self.say(f"fetching RocketMQ {self.local.version} server jars from Maven Central into {self.lib}")
        result = subprocess.run(
            ["mvn", "-q", "-B", "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={self.lib}"],
            cwd=self.cache, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0 or not list(self.lib.glob("rocketmq-proxy-*.jar")):
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise BrokerError(f"maven could not fetch RocketMQ {self.local.version}: {' | '.join(tail)}")
        marker.touch()
        return self.lib

    def _shim(self) -> Path:
        shim = self.cache / "loopback_bind.so"
        if shim.exists() and shim.stat().st_mtime >= SHIM_SOURCE.stat().st_mtime:
            return shim
        compiler = shutil.which("gcc") or shutil.which("cc")
        if compiler is None:
            raise BrokerError(
                "gcc is needed to build the loopback-bind library that keeps RocketMQ on 127.0.0.1"
            )
        tmp = shim.with_suffix(".tmp")
        subprocess.run(
            [compiler, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(SHIM_SOURCE), "-ldl"], check=True
        )
        tmp.replace(shim)
        return shim

    # -- configuration -----------------------------------------------------------------------

    def _write_configs(self) -> None:
        for folder in ("conf", "home", "store", "namesrv"):
            (self.data / folder).mkdir(parents=True, exist_ok=True)
        d, port = self.data, self.local.broker_port
        (d / "conf" / "namesrv.conf").write_text(
            f"listenPort={self.namesrv_port}\nbindAddress=127.0.0.1\nrocketmqHome={d}/home\n"
            f"kvConfigPath={d}/namesrv/kvConfig.json\nconfigStorePath={d}/namesrv/namesrv.properties\n"
        )
        broker = {
            "brokerClusterName": "DefaultCluster",
            "brokerName": "broker-a",
            "brokerId": 0,
            "brokerRole": "ASYNC_MASTER",
            "flushDiskType": "ASYNC_FLUSH",
            "rocketmqHome": f"{d}/home",
            "namesrvAddr": f"127.0.0.1:{self.namesrv_port}",
            "brokerIP1": "127.0.0.1",
            "brokerIP2": "127.0.0.1",
            "bindAddress": "127.0.0.1",
            "listenPort": port,
            "haListenPort": port + 1,
            "storePathRootDir": f"{d}/store",
            "storePathCommitLog": f"{d}/store/commitlog",
            "mappedFileSizeCommitLog": 100 * 1024 * 1024,
            "mappedFileSizeTimerLog": 100 * 1024 * 1024,
            # Shared disks here run 70-80 % full; the default 90 % would refuse writes early.
            "diskSpaceWarningLevelRatio": 98,
            "diskSpaceCleanForciblyRatio": 97,
            "diskMaxUsedSpaceRatio": 95,
            "enablePropertyFilter": "true",
            "enableMixedMessageType": "true",
            "autoCreateTopicEnable": "false",
            "autoCreateSubscriptionGroup": "true",
        }
        (d / "conf" / "broker.conf").write_text("".join(f"{k}={v}\n" for k, v in broker.items()))
        proxy = {
            "rocketMQClusterName": "DefaultCluster",
            "namesrvAddr": f"127.0.0.1:{self.namesrv_port}",
            "grpcServerPort": self.grpc_port,
            "remotingListenPort": self.local.proxy_remoting_port,
            "localServeAddr": "127.0.0.1",
            "remotingAccessAddr": "127.0.0.1",
            "grpcThreadPoolNums": 8,
            "grpcBossLoopNum": 1,
            "grpcWorkerLoopNum": 2,
            "grpcShutdownTimeSeconds": 3,
            "grpcClientConsumerMinLongPollingTimeoutMillis": 1000,
            "minInvisibleTimeMillsForRecv": 1000,
        }
        (d / "conf" / "rmq-proxy.json").write_text(json.dumps(proxy, indent=2))

    def _java(self, heap_mb: int, logback: str, main: str, *args: str) -> list[str]:
        return [
            "java", "-server", "-XX:+UseG1GC", "-XX:-OmitStackTraceInFastThrow", "-XX:+PerfDisableSharedMem",
            "-XX:ActiveProcessorCount=2", f"-Xms{heap_mb // 2}m", f"-Xmx{heap_mb}m",
            f"-XX:MaxDirectMemorySize={max(128, heap_mb * 2 // 3)}m",
            f"-Duser.home={self.data / 'home'}", f"-Drocketmq.home.dir={self.data / 'home'}",
            f"-Drmq.logback.configurationFile={logback}", *JDK17_FLAGS,
            "-cp", f"{self.lib}/*", main, *args,
        ]  # fmt: skip

    def _namesrv_command(self) -> list[str]:
        return self._java(
            self.local.namesrv_heap_mb,
            "rmq.namesrv.logback.xml",
            "org.apache.rocketmq.namesrv.NamesrvStartup",
            *("-c", str(self.data / "conf" / "namesrv.conf")),
        )

    def _broker_command(self) -> list[str]:
        return self._java(
            self.local.broker_heap_mb,
            "rmq.proxy.logback.xml",
            "org.apache.rocketmq.proxy.ProxyStartup",
            *("-pm", "local", "-n", f"127.0.0.1:{self.namesrv_port}"),
            *(
                "-bc",
                str(self.data / "conf" / "broker.conf"),
                "-pc",
                str(self.data / "conf" / "rmq-proxy.json"),
            ),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _pid(self, name: str) -> int | None:
        """The pid in ``name``.pid if that process is alive and ours (started in our data folder:
        its cwd; cmdline reads back empty for a while as the java launcher re-execs itself)."""
        try:
            pid = int((self.data / f"{name}.pid").read_text())
            cwd = os.readlink(f"/proc/{pid}/cwd")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if cwd == str(self.data) and state != "Z" else None

    def status(self) -> BrokerStatus:
        return BrokerStatus(self._pid("namesrv"), self._pid("broker"), _port_open(self.grpc_port))

    def start(self, fresh: bool = False) -> float:
        """Start (or find running) and return seconds until a probe message round-tripped."""
        started = time.monotonic()
        if self.status().running and not fresh:
            self.say(f"RocketMQ already running (gRPC 127.0.0.1:{self.grpc_port})")
            return 0.0
        self.stop(quiet=True)
        if fresh and self.data.exists():
            shutil.rmtree(self.data)
        if shutil.which("java") is None:
            raise BrokerError("Java 17+ is needed to run the RocketMQ broker")
        self.fetch()
        shim = self._shim()
        ports = [self.namesrv_port, self.local.broker_port, self.local.broker_port + 1,
                 self.local.broker_port - 2, self.grpc_port, self.local.proxy_remoting_port]  # fmt: skip
        busy = [p for p in ports if _port_open(p)]
        if busy:
            raise BrokerError(f"port(s) {', '.join(map(str, busy))} already in use on 127.0.0.1")
        self._write_configs()
        deadline = started + self.local.start_timeout_s
        try:
            self._spawn("namesrv", self._namesrv_command(), shim)
            self._wait("NameServer", deadline, "namesrv", "boot success", self.namesrv_port)
            self._spawn("broker", self._broker_command(), shim)
            self._wait("broker and gRPC proxy", deadline, "broker", "startup successfully", self.grpc_port)
            self.create_topics(deadline)
            self._probe(deadline)
        except BaseException:
            self.stop(quiet=True)
            raise
        elapsed = time.monotonic() - started
        self.say(
            f"RocketMQ {self.local.version} ready in {elapsed:.1f} s: "
            f"NameServer 127.0.0.1:{self.namesrv_port}, broker 127.0.0.1:{self.local.broker_port}, "
            f"gRPC proxy 127.0.0.1:{self.grpc_port}, data {self.data}"
        )
        return elapsed

    def _spawn(self, name: str, command: list[str], shim: Path) -> None:
        out = (self.data / f"{name}.out").open("wb")
        process = subprocess.Popen(
            command, cwd=self.data, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "LD_PRELOAD": str(shim)}, start_new_session=True,  # outlives this CLI
        )  # fmt: skip
        out.close()
        (self.data / f"{name}.pid").write_text(str(process.pid))

    def _log_has(self, name: str, text: str) -> bool:
        try:
            return text in (self.data / f"{name}.out").read_text(errors="replace")
        except OSError:
            return False

    def _wait(self, what: str, deadline: float, name: str, log_line: str, port: int) -> None:
        """Until the JVM has logged ``log_line`` and accepts connections on ``port``."""
        while not (self._log_has(name, log_line) and _port_open(port)):
            if self._pid(name) is None:
                raise BrokerError(f"{what} exited during start-up: {self._tail(name)}")
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"{what} not ready within {self.local.start_timeout_s:g} s: {self._tail(name)}"
                )
            time.sleep(0.2)

    def _tail(self, name: str) -> str:
        try:
            lines = (self.data / f"{name}.out").read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no output)"
        return " | ".join(lines[-3:]) or "(no output)"

    def _admin(self, *args: str) -> str:
        command = self._java(
            128, "rmq.tools.logback.xml", "org.apache.rocketmq.tools.command.MQAdminStartup",
            *args, "-n", f"127.0.0.1:{self.namesrv_port}",
        )  # fmt: skip
        command.insert(1, "-XX:TieredStopAtLevel=1")  # a short-lived JVM: skip the slow JIT tier
        result = subprocess.run(command, cwd=self.data, capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    def create_topic(self, name: str, message_type: MessageType, deadline: float) -> None:
        # updateTopic exits 0 even when it fails: only its "success" line counts.
        while True:
            out = self._admin(
                "updateTopic",
                "-c",
                "DefaultCluster",
                "-t",
                name,
                "-r",
                "4",
                "-w",
                "4",
                "-a",
                f"+message.type={message_type}",
            )
            if "success" in out and "create topic to" in out:
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"creating topic {name} failed: {out.strip().splitlines()[-1:]}")
            time.sleep(0.5)

    def create_topics(self, deadline: float) -> None:
        """The first topic also waits out the broker's registration; the rest go in parallel."""
        (first, first_type), *rest = self.topics.items()
        self.create_topic(first, first_type, deadline)
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(self.create_topic, n, t, deadline) for n, t in rest]:
                future.result()
        self.say(f"topics: {', '.join(f'{n} ({t})' for n, t in self.topics.items())}")

    def _probe(self, deadline: float) -> None:
        asyncio.run(probe_round_trip(self.settings, deadline))

    def stop(self, quiet: bool = False, timeout_s: float = 60.0) -> None:
        # The broker first, so it unregisters from a NameServer that is still there.
        for name in ("broker", "namesrv"):
            pid = self._pid(name)
            if pid is not None:
                _terminate(pid, timeout_s)
            (self.data / f"{name}.pid").unlink(missing_ok=True)
        if not quiet:
            self.say("RocketMQ stopped")


def _terminate(pid: int, timeout_s: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        _reap(pid)
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    _reap(pid)


def _reap(pid: int) -> None:
    # A broker started by this very process (tests) would linger as a zombie otherwise.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


async def probe_round_trip(settings: RocketMQSettings, deadline: float) -> float:
    """Send one message and receive it back through the gRPC proxy; return the seconds it took."""
    from voiceagent.events.rocketmq.client import RocketMQBus

    bus = RocketMQBus(settings, {PROBE_TOPIC: "NORMAL"}, workers=4)
    tag = f"probe-{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    last_error: Exception | None = None
    try:
        await bus.start()
        consumer = await bus.consumer(f"voiceagent-probe-{uuid.uuid4().hex[:8]}", {PROBE_TOPIC: tag})
        sent = False
        while time.monotonic() < deadline:
            try:
                if not sent:
                    await bus.send(OutgoingMessage(topic=PROBE_TOPIC, body=b"probe", tag=tag))
                    sent = True
                for message in await consumer.receive(max_messages=1, wait_s=2):
                    await consumer.ack(message)
                    return time.monotonic() - started
            except Exception as exc:  # the proxy is often still settling right after start
                last_error = exc
                await asyncio.sleep(0.5)
        raise BrokerError(f"probe message did not round-trip: {last_error}")
    finally:
        await bus.close()

"""Getting a Spark to run on: requirement checks, a configured session, a standalone cluster.

The pyspark package from PyPI bundles Spark but not its ``sbin/start-*.sh`` scripts, so
:class:`StandaloneCluster` starts a master and workers with ``bin/spark-class`` from the
package directory (SPARK_HOME), on 127.0.0.1 and free ports — enough for tests and for
trying a ``spark://`` master on one machine. Measured start-up times are in
``design/SPARK_NOTES.md``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from galdecon.errors import EngineError

log = logging.getLogger("galdecon")

INSTALL_HINT = "install with: pip install 'galdecon[spark]'"


def find_java() -> str | None:
    """Return the ``java`` executable from JAVA_HOME or PATH, or None."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def java_major_version(java: str) -> int | None:
    """Return the major version of a ``java`` executable, or None if it does not run."""
    try:
        text = subprocess.run([java, "-version"], capture_output=True, text=True,
                              timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def require_spark():
    """Return the imported ``pyspark`` module after checking pyspark and Java.

    Raises
    ------
    EngineError
        One line naming what is missing and how to install it.
    """
    try:
        import pyspark
    except ImportError as exc:
        raise EngineError(f"the Spark engine needs pyspark: {INSTALL_HINT}") from exc
    needed = 17 if int(pyspark.__version__.split(".")[0]) >= 4 else 8
    java = find_java()
    major = java_major_version(java) if java else None
    if major is None or major < needed:
        found = "no Java found on PATH or JAVA_HOME" if major is None else f"found Java {major}"
        raise EngineError(f"the Spark engine needs Java {needed}+ ({found}): install Java "
                          f"{needed} or newer")
    return pyspark


def active_session():
    """The SparkSession already running in this process, or None (also without pyspark)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        return None
    return SparkSession.getActiveSession()


def is_loopback(master: str) -> bool:
    """Whether a master URL runs everything on this machine."""
    return master.startswith("local") or re.match(
        r"spark://(127\.0\.0\.1|localhost)[:/]", master) is not None


# Off, not ERROR: galdecon reports a failed job in one line of its own, and an executor's
# ERROR log repeats the worker's Python trace (~50 lines). The REPL logger must match
# the root's, or Spark announces a "default log level" of its own. -v logs at WARN.
QUIET_LOG4J2 = """\
rootLogger.level = off
logger.repl.name = org.apache.spark.repl.Main
logger.repl.level = off
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = off
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n
"""


#: Seconds to wait for a standalone master's port to accept a connection.
MASTER_CONNECT_TIMEOUT = 5.0


def master_addresses(master: str) -> list[tuple[str, int]]:
    """(host, port) of each master of a ``spark://h1:p1,h2:p2`` URL; [] for others."""
    if not master.startswith("spark://"):
        return []
    found = []
    for part in master[len("spark://"):].split(","):
        host, _, port = part.strip().rstrip("/").rpartition(":")
        found.append((host or part, int(port) if port.isdigit() else 7077))
    return found


def check_master_reachable(master: str, timeout: float = MASTER_CONNECT_TIMEOUT) -> None:
    """Refuse at once a ``spark://`` master none of whose addresses accepts a connection.

    Without this, Spark retries its registration for about a minute and then reports a
    stopped SparkContext in a page of Java trace.

    Raises
    ------
    EngineError
        Naming the master and why each address failed.
    """
    failures = []
    for host, port in master_addresses(master):
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return
        except OSError as exc:
            failures.append(f"{host}:{port}: {exc.strerror or exc}")
    if failures:
        raise EngineError(f"cannot reach the Spark master {master} ({'; '.join(failures)}); "
                          "is it running? (or run locally: --master 'local[*]')")


def java_message(exc: BaseException) -> str:
    """The first line that says what a Py4J/Java failure was (not its stack trace)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    cause = next((line.lstrip(": ") for line in lines[1:] if "Exception" in line), None)
    return (cause or (lines[0] if lines else type(exc).__name__))[:300]


def start_session(master: str, app_name: str, scratch: str, verbose: bool = False,
                  ui: bool = False, driver_memory: str = "4g", conf: dict | None = None):
    """Start (or join) a classic SparkSession with galdecon's safe defaults.

    Parameters
    ----------
    master : str
    app_name : str
    scratch : str
        Directory for ``spark.local.dir`` (shuffle and spill files).
    verbose : bool
        WARN logs and the console progress bar (else ERROR and silence).
    ui : bool
        Enable the web UI.
    driver_memory : str
        ``spark.driver.memory`` (effective only when this call launches the JVM).
    conf : dict, optional
        More configuration; wins over the defaults.

    Returns
    -------
    pyspark.sql.SparkSession
    """
    require_spark()
    check_master_reachable(master)
    from pyspark.sql import SparkSession

    conf = dict(conf or {})
    if is_loopback(master):
        # Otherwise Spark binds to, and advertises, the external interface.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        conf.setdefault("spark.driver.host", "127.0.0.1")
        conf.setdefault("spark.driver.bindAddress", "127.0.0.1")
    # Executors must run this interpreter: its environment has galdecon and numpy.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    level = "WARN" if verbose else "ERROR"
    defaults = {
        "spark.api.mode": "classic",  # the RDD API does not exist in Spark Connect
        "spark.local.dir": scratch,
        "spark.ui.enabled": str(bool(ui)).lower(),
        "spark.ui.showConsoleProgress": str(bool(verbose)).lower(),
        "spark.log.level": level,
        # Loopback TCP stalls cost ~20 ms per task (SPARK_NOTES); a Unix socket does not.
        "spark.python.unix.domain.socket.enabled": "true",
        "spark.driver.memory": driver_memory,
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        # A low-rank map returns one packed p × p triangle per partition and factor
        # (11 MB each at 41×41): sent with the task result rather than through the block
        # manager, and many partitions' worth allowed per job.
        "spark.task.maxDirectResultSize": str(64 * 2**20),
        "spark.driver.maxResultSize": "2g",
    }
    if not verbose and "spark.driver.extraJavaOptions" not in conf:
        # A log configuration of our own from the JVM's first line: without it Spark
        # announces its default profile and logs at WARN until the level is set below.
        # (Applied when this call launches the JVM, as in local mode.)
        quiet = Path(scratch) / "log4j2-galdecon.properties"
        quiet.write_text(QUIET_LOG4J2)
        defaults["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={quiet.as_uri()}"
        del defaults["spark.log.level"]  # the file sets it; the setting would announce it
    for key, value in defaults.items():
        conf.setdefault(key, value)
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in conf.items():
        builder = builder.config(key, str(value))
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        raise EngineError(f"could not start Spark with master {master!r}: "
                          f"{java_message(exc)}") from exc
    if "spark.log.level" in conf:
        spark.sparkContext.setLogLevel(conf["spark.log.level"])
    elif verbose:
        spark.sparkContext.setLogLevel(level)
    return spark


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StandaloneCluster:
    """A Spark standalone master and workers on 127.0.0.1, from the pip package.

    Parameters
    ----------
    n_workers : int
        Number of worker processes.
    cores : int
        Cores each worker offers.
    memory : str
        Memory each worker offers (e.g. ``"2g"``).
    timeout : float
        Seconds to wait for the master and all workers to be up.

    Examples
    --------
    >>> with StandaloneCluster(n_workers=2) as cluster:     # doctest: +SKIP
    ...     engine = SparkEngine(master=cluster.url)
    """

    def __init__(self, n_workers: int = 2, cores: int = 1, memory: str = "2g",
                 timeout: float = 120.0):
        self.n_workers, self.cores, self.memory = int(n_workers), int(cores), memory
        self.timeout = float(timeout)
        self.port = self.webui_port = None
        self.processes: list[subprocess.Popen] = []
        self.workdir = None

    @property
    def url(self) -> str:
        """The master URL, ``spark://127.0.0.1:PORT``."""
        return f"spark://127.0.0.1:{self.port}"

    def worker_dir(self, index: int) -> str:
        """Work directory of worker ``index`` (executor logs, and ``local/`` for blocks)."""
        return os.path.join(self.workdir, f"worker{index}")

    def worker_processes(self) -> list[subprocess.Popen]:
        """The worker JVM processes, in worker order."""
        return self.processes[1:]

    def _spawn(self, args: list, name: str, env: dict | None = None) -> subprocess.Popen:
        pyspark = require_spark()
        home = os.path.dirname(pyspark.__file__)
        env = dict(os.environ, SPARK_HOME=home, SPARK_LOCAL_IP="127.0.0.1",
                   PYSPARK_PYTHON=os.environ.get("PYSPARK_PYTHON", sys.executable),
                   SPARK_LOG_DIR=self.workdir, SPARK_WORKER_DIR=self.workdir, **(env or {}))
        logfile = open(os.path.join(self.workdir, f"{name}.log"), "wb")  # noqa: SIM115
        try:
            # A session of its own, so stop() can signal the JVM and its children together.
            process = subprocess.Popen([os.path.join(home, "bin", "spark-class")] + args,
                                       env=env, stdout=logfile, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        finally:
            logfile.close()
        self.processes.append(process)
        return process

    def _state(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.webui_port}/json/",
                                        timeout=5) as reply:
                return json.load(reply)
        except (OSError, ValueError):
            return None

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.processes):
                raise EngineError(f"a Spark {what} process exited; logs in {self.workdir}")
            state = self._state()
            if state is not None and ready(state):
                return
            time.sleep(0.5)
        raise EngineError(f"Spark {what} not up after {self.timeout:.0f} s; logs in "
                          f"{self.workdir}")

    def start(self) -> StandaloneCluster:
        """Start the master, then the workers; return when all workers are ALIVE."""
        self.workdir = tempfile.mkdtemp(prefix="galdecon-cluster-")
        self.port, self.webui_port = free_port(), free_port()
        try:
            self._spawn(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                         "--port", str(self.port), "--webui-port", str(self.webui_port)],
                        "master")
            self._wait(lambda s: s.get("status") == "ALIVE", "master")
            for index in range(self.n_workers):
                work = self.worker_dir(index)
                os.makedirs(os.path.join(work, "local"), exist_ok=True)
                # Executors keep shuffle, spill and block files under the worker's own
                # local dir, so the disk each worker uses can be measured apart.
                self._spawn(["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                             "--cores", str(self.cores), "--memory", self.memory,
                             "--work-dir", work, "--webui-port", str(free_port()), self.url],
                            f"worker{index}",
                            env={"SPARK_LOCAL_DIRS": os.path.join(work, "local")})
            self._wait(lambda s: sum(w.get("state") == "ALIVE" for w in s.get("workers", []))
                       >= self.n_workers, "workers")
        except BaseException:
            self.stop()
            raise
        log.info("standalone Spark cluster at %s with %d workers", self.url, self.n_workers)
        return self

    def stop(self) -> None:
        """Stop the workers, then the master (TERM, then KILL), and remove the work dir."""
        for process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=20)
        self.processes = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

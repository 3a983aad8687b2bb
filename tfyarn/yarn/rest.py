"""A small client of the ResourceManager REST API (``/ws/v1/cluster``).

Only what tfyarn needs: cluster and node state, one application's state, waiting for a
state, and killing an application. Standard library only (``urllib``), so it works on any
client host. Pseudo authentication (``?user.name=``) is sent with every call: it is what
a non-Kerberos RM expects for state-changing calls such as kill.
"""

from __future__ import annotations

import getpass
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tfyarn.errors import YarnError

__all__ = [
    "CONTAINER_SIGNALS",
    "FINAL_STATES",
    "AppReport",
    "HTTPStatusError",
    "ResourceManagerClient",
    "check_app_id",
    "check_container_id",
    "http_json",
]

#: YARN application states after which nothing changes any more.
FINAL_STATES: frozenset[str] = frozenset({"FINISHED", "FAILED", "KILLED"})


@dataclass(frozen=True)
class AppReport:
    """The fields of one application the tests and the CLI look at.

    Parameters
    ----------
    app_id : str
        ``application_<cluster timestamp>_<seq>``.
    state : str
        YARN state: NEW ... RUNNING, FINISHED, FAILED, KILLED.
    final_status : str
        UNDEFINED while running; SUCCEEDED, FAILED or KILLED at the end.
    name : str
        Application name.
    tracking_url : str
        Tracking URL (the Spark UI through the RM proxy while running).
    diagnostics : str
        The RM's diagnostics (why it failed, who killed it).
    log_aggregation_status : str
        NOT_START, RUNNING, SUCCEEDED, FAILED, TIME_OUT, ... (``logAggregationStatus``).
    raw : dict
        The whole ``app`` object of the REST answer.
    """

    app_id: str
    state: str
    final_status: str
    name: str
    tracking_url: str
    diagnostics: str
    log_aggregation_status: str
    raw: dict[str, Any]

    @property
    def done(self) -> bool:
        """Whether the application reached a final state."""
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, app: dict[str, Any]) -> AppReport:
        """Build from the ``app`` object of ``/ws/v1/cluster/apps/{id}``."""
        return cls(
            app_id=str(app.get("id", "")),
            state=str(app.get("state", "")),
            final_status=str(app.get("finalStatus", "")),
            name=str(app.get("name", "")),
            tracking_url=str(app.get("trackingUrl", "") or ""),
            diagnostics=str(app.get("diagnostics", "") or ""),
            log_aggregation_status=str(app.get("logAggregationStatus", "") or ""),
            raw=app,
        )


class ResourceManagerClient:
    """Talk to one ResourceManager's REST API.

    Parameters
    ----------
    base_url : str
        The RM web app, e.g. ``http://127.0.0.1:8088``.
    user : str, optional
        User name for pseudo authentication; default the current user.
    timeout_s : float
        Timeout of each HTTP call.
    """

    def __init__(self, base_url: str, user: str | None = None, timeout_s: float = 10.0) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise YarnError(f"RM web URL {base_url!r} must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.user = user or getpass.getuser()
        self.timeout_s = timeout_s

    # -- plumbing -----------------------------------------------------------------------
    def _url(self, path: str, params: dict[str, str] | None = None) -> str:
        query = urllib.parse.urlencode({"user.name": self.user, **(params or {})})
        return f"{self.base_url}/ws/v1/cluster{path}?{query}"

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            return dict(http_json(method, self._url(path, params), body, self.timeout_s))
        except HTTPStatusError as exc:
            raise YarnError(f"RM REST {method} {path} -> HTTP {exc.code}: {exc.detail}") from exc
        except OSError as exc:
            raise YarnError(
                f"cannot reach the ResourceManager at {self.base_url} ({exc}); is YARN up? "
                "(`tfyarn yarn-dev status`)"
            ) from exc

    # -- queries ------------------------------------------------------------------------
    def reachable(self) -> bool:
        """Whether the RM answers its REST API at all."""
        try:
            self.cluster_info()
        except YarnError:
            return False
        return True

    def cluster_info(self) -> dict[str, Any]:
        """``/ws/v1/cluster/info`` (state, RM version, start time)."""
        return dict(self._call("GET", "/info").get("clusterInfo", {}))

    def nodes(self) -> list[dict[str, Any]]:
        """Every NodeManager the RM knows, with its ``state`` (RUNNING, LOST, ...)."""
        nodes = self._call("GET", "/nodes").get("nodes") or {}
        return list(nodes.get("node") or [])

    def running_nodes(self) -> list[dict[str, Any]]:
        """NodeManagers in state RUNNING."""
        return [n for n in self.nodes() if n.get("state") == "RUNNING"]

    def app(self, app_id: str) -> AppReport:
        """The report of one application."""
        check_app_id(app_id)
        return AppReport.from_json(self._call("GET", f"/apps/{app_id}").get("app", {}))

    def apps(self, states: Iterable[str] = ()) -> list[AppReport]:
        """Applications, optionally only those in ``states``."""
        wanted = ",".join(states)
        answer = self._call("GET", "/apps", params={"states": wanted} if wanted else None)
        apps = (answer.get("apps") or {}).get("app") or []
        return [AppReport.from_json(a) for a in apps]

    # -- actions ------------------------------------------------------------------------
    def kill(self, app_id: str) -> None:
        """Ask the RM to kill ``app_id`` (``PUT /apps/{id}/state {"state": "KILLED"}``)."""
        check_app_id(app_id)
        self._call("PUT", f"/apps/{app_id}/state", {"state": "KILLED"})

    def signal_container(self, container_id: str, command: str = "FORCEFUL_SHUTDOWN") -> None:
        """Have the container's NodeManager signal it, through the RM.

        ``POST /containers/{id}/signal/{command}``: ``FORCEFUL_SHUTDOWN`` kills it (SIGKILL,
        as the RM's preemption and an operator's ``yarn container -signal`` do),
        ``GRACEFUL_SHUTDOWN`` sends SIGTERM first, ``OUTPUT_THREAD_DUMP`` asks a JVM for
        its threads (in the container's stdout).
        """
        check_container_id(container_id)
        if command not in CONTAINER_SIGNALS:
            raise YarnError(
                f"unknown container signal {command!r}; one of {', '.join(CONTAINER_SIGNALS)}"
            )
        self._call("POST", f"/containers/{container_id}/signal/{command}")

    def wait_for_state(
        self,
        app_id: str,
        states: Iterable[str] = FINAL_STATES,
        timeout_s: float = 300.0,
        poll_s: float = 0.5,
    ) -> AppReport:
        """Poll until ``app_id`` is in one of ``states``; return its report.

        Raises
        ------
        YarnError
            The state was not reached within ``timeout_s``.
        """
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout_s
        report = self.app(app_id)
        while report.state not in wanted:
            if time.monotonic() > deadline:
                raise YarnError(
                    f"{app_id} is {report.state} after {timeout_s:.0f} s, expected one of "
                    f"{sorted(wanted)}; diagnostics: {report.diagnostics or '-'}"
                )
            time.sleep(poll_s)
            report = self.app(app_id)
        return report

    def wait_for_log_aggregation(self, app_id: str, timeout_s: float = 60.0) -> AppReport:
        """Wait until the logs of a finished application are aggregated (or it gave up)."""
        deadline = time.monotonic() + timeout_s
        report = self.app(app_id)
        while report.log_aggregation_status not in {"SUCCEEDED", "FAILED", "TIME_OUT", "DISABLED"}:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
            report = self.app(app_id)
        return report


class HTTPStatusError(YarnError):
    """An HTTP error answer of a YARN REST API, with its status code and body.

    Parameters
    ----------
    code : int
        HTTP status.
    detail : str
        The start of the answer's body (YARN puts its diagnostics there).
    """

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"HTTP {code}: {detail}")
        self.code = code
        self.detail = detail


def http_json(method: str, url: str, body: Any = None, timeout_s: float = 10.0) -> Any:
    """One JSON request to a YARN REST API; the parsed answer ({} when empty).

    Raises
    ------
    HTTPStatusError
        The server answered with an error status.
    OSError
        It could not be reached (``urllib.error.URLError`` is one).
    """
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            text = resp.read().decode()
    except urllib.error.HTTPError as exc:
        raise HTTPStatusError(exc.code, exc.read().decode(errors="replace")[:500]) from exc
    return json.loads(text) if text.strip() else {}


#: The commands of :meth:`ResourceManagerClient.signal_container` (YARN's
#: SignalContainerCommand).
CONTAINER_SIGNALS = ("OUTPUT_THREAD_DUMP", "GRACEFUL_SHUTDOWN", "FORCEFUL_SHUTDOWN")


def check_container_id(container_id: str) -> None:
    """Raise :class:`YarnError` unless it looks like ``container_[e<n>_]<n>_<n>_<n>_<n>``."""
    parts = container_id.split("_")
    if parts and len(parts) == 6 and parts[1].startswith("e"):
        parts = [parts[0], *parts[2:]]  # the epoch of an RM restart, as in container_e17_...
    if len(parts) != 5 or parts[0] != "container" or not all(p.isdigit() for p in parts[1:]):
        raise YarnError(
            f"{container_id!r} is not a YARN container id "
            "(expected container_<digits>_<digits>_<digits>_<digits>)"
        )


def check_app_id(app_id: str) -> None:
    """Raise :class:`YarnError` unless ``app_id`` looks like ``application_<n>_<n>``."""
    parts = app_id.split("_")
    if len(parts) != 3 or parts[0] != "application" or not all(p.isdigit() for p in parts[1:]):
        raise YarnError(
            f"{app_id!r} is not a YARN application id (expected application_<digits>_<digits>)"
        )

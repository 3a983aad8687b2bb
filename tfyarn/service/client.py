"""A client of the YARN Services REST API (``/app/v1/services`` on the ResourceManager).

What ``tfyarn service launch|status|flex|stop|start|destroy`` and attaching jobs call.
Standard library only (``urllib``); pseudo authentication (``?user.name=``) as a
non-Kerberos RM expects. Errors carry the API's own diagnostics.
"""

from __future__ import annotations

import getpass
import json
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tfyarn.errors import ConfigError, YarnError
from tfyarn.yarn.rest import HTTPStatusError, http_json

__all__ = [
    "ServiceNotFoundError",
    "ServicesClient",
    "configured_counts",
    "ready_counts",
    "rm_web_url",
]


class ServiceNotFoundError(YarnError):
    """The ResourceManager knows no service of that name."""


def rm_web_url(env: Mapping[str, str]) -> str:
    """The ResourceManager web URL: ``$TFYARN_RM_URL``, else from ``$HADOOP_CONF_DIR``.

    Raises
    ------
    ConfigError
        Neither is set, or the conf dir has no yarn-site.xml.
    """
    from tfyarn.yarn.logs import hadoop_conf_dir
    from tfyarn.yarn.logs import rm_web_url as from_yarn_site

    explicit = env.get("TFYARN_RM_URL")
    if explicit:
        return explicit.rstrip("/")
    try:
        return from_yarn_site(hadoop_conf_dir(env))
    except ConfigError as exc:
        raise ConfigError(f"{exc}; or set TFYARN_RM_URL=http://<rm host>:8088") from None


class ServicesClient:
    """Launch, inspect, flex, stop, start and destroy YARN services.

    Parameters
    ----------
    rm_url : str
        The RM web app, e.g. ``http://127.0.0.1:8088``.
    user : str, optional
        User for pseudo authentication; default the current user.
    timeout_s : float
        Timeout of each HTTP call.
    """

    def __init__(self, rm_url: str, user: str | None = None, timeout_s: float = 30.0) -> None:
        if not rm_url.startswith(("http://", "https://")):
            raise ConfigError(f"RM web URL {rm_url!r} must start with http:// or https://")
        self.rm_url = rm_url.rstrip("/")
        self.user = user or getpass.getuser()
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        query = urllib.parse.urlencode({"user.name": self.user})
        url = f"{self.rm_url}/app/v1/services{path}?{query}"
        try:
            return http_json(method, url, body, self.timeout_s)
        except HTTPStatusError as exc:
            detail = _diagnostics(exc.detail)
            if exc.code == 404 and method == "GET":
                raise ServiceNotFoundError(f"no such service ({detail})") from exc
            raise YarnError(
                f"YARN Services API {method} {path or '/'} -> HTTP {exc.code}: {detail}"
            ) from exc
        except OSError as exc:
            raise YarnError(
                f"cannot reach the YARN Services API at {self.rm_url} ({exc}); is the RM up "
                "with yarn.webapp.api-service.enable=true? (`tfyarn yarn-dev up --services`)"
            ) from exc

    def api_version(self) -> str:
        """The Hadoop version the Services API answers with (raises if it is off)."""
        return str(self._call("GET", "/version").get("hadoop_version", "?")).split(" from ")[0]

    # -- actions ---------------------------------------------------------------------------
    def launch(self, yarnfile: Mapping[str, Any]) -> str:
        """Submit a service; return the API's diagnostics (with the application id)."""
        answer = self._call("POST", "", yarnfile)
        return str(answer.get("diagnostics", ""))

    def status(self, name: str) -> dict[str, Any]:
        """The service's status: state, components, containers (``GET /{name}``)."""
        return dict(self._call("GET", f"/{_quote(name)}"))

    def exists(self, name: str) -> bool:
        """Whether the RM knows the service (in any state)."""
        try:
            self.status(name)
        except ServiceNotFoundError:
            return False
        return True

    def flex(self, name: str, component: str, instances: int) -> str:
        """Set a component's number of containers."""
        if instances < 0:
            raise ConfigError(f"cannot flex {component} to {instances} containers")
        answer = self._call(
            "PUT",
            f"/{_quote(name)}/components/{_quote(component)}",
            {"number_of_containers": instances},
        )
        return str(answer.get("diagnostics", ""))

    def stop(self, name: str) -> str:
        """Stop every container; the definition (and the state dir) stay for a start."""
        return self._set_state(name, "STOPPED")

    def start(self, name: str) -> str:
        """Start a stopped service again."""
        return self._set_state(name, "STARTED")

    def _set_state(self, name: str, state: str) -> str:
        answer = self._call("PUT", f"/{_quote(name)}", {"state": state})
        return str(answer.get("diagnostics", ""))

    def destroy(self, name: str) -> str:
        """Stop the service and delete its definition (not its state dir)."""
        return str(self._call("DELETE", f"/{_quote(name)}").get("diagnostics", ""))

    # -- waiting ---------------------------------------------------------------------------
    def wait(
        self,
        name: str,
        ready: Mapping[str, int] | None = None,
        states: tuple[str, ...] = ("STABLE",),
        timeout_s: float = 300.0,
        poll_s: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the service is in one of ``states`` with ``ready`` READY containers.

        ``ready`` maps a component to the number of READY containers wanted (default:
        its ``number_of_containers``).

        Raises
        ------
        YarnError
            Not reached in ``timeout_s``; the message shows the last status.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self.status(name)
            except ServiceNotFoundError:
                status = {"state": "NOT_FOUND", "components": []}
            counts = ready_counts(status)
            wanted = dict(ready) if ready is not None else configured_counts(status)
            if effective_state(status) in states and all(
                counts.get(c, 0) == n for c, n in wanted.items()
            ):
                return status
            if time.monotonic() > deadline:
                raise YarnError(
                    f"service {name} is {status.get('state')} (components "
                    f"{component_states(status)}) with READY containers {counts} "
                    f"after {timeout_s:.0f} s, wanted {sorted(states)} with {wanted}; "
                    f"`tfyarn service status {name}` shows the containers, "
                    f"`tfyarn logs <application id>` their output"
                )
            time.sleep(poll_s)


def effective_state(status: Mapping[str, Any]) -> str:
    """The service's state, STABLE when every component is STABLE.

    The service AM re-evaluates its own state only when a container's READY count
    changes, and reads the components' states at that moment; when the last container
    turns READY just before its component's state is updated (seen on a loaded 2-core
    machine), the service stays STARTED for good although every component is STABLE
    with all its containers READY. The components' states are the ones kept current,
    so they decide.
    """
    state = str(status.get("state", ""))
    components = status.get("components") or []
    if state == "STARTED" and components and all(c.get("state") == "STABLE" for c in components):
        return "STABLE"
    return state


def component_states(status: Mapping[str, Any]) -> dict[str, str]:
    """Each component's state (``STABLE``, ``FLEXING``, ...) in a service status."""
    return {c["name"]: str(c.get("state", "-")) for c in status.get("components") or []}


def configured_counts(status: Mapping[str, Any]) -> dict[str, int]:
    """``number_of_containers`` per component in a service status."""
    return {
        c["name"]: int(c.get("number_of_containers", 0)) for c in status.get("components") or []
    }


def ready_counts(status: Mapping[str, Any]) -> dict[str, int]:
    """READY containers per component in a service status."""
    return {
        c["name"]: sum(1 for k in c.get("containers") or [] if k.get("state") == "READY")
        for c in status.get("components") or []
    }


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _diagnostics(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(data, dict):
        return str(data.get("diagnostics") or data)[:500]
    return str(data)[:500]

"""How a YARN service's status is read: READY counts and the effective state."""

from __future__ import annotations

from typing import Any

from tfyarn.service.client import (
    component_states,
    configured_counts,
    effective_state,
    ready_counts,
)


def _status(state: str, *components: tuple[str, str, int, int]) -> dict[str, Any]:
    """A status document as the Services API returns it: (name, state, wanted, ready)."""
    return {
        "state": state,
        "components": [
            {
                "name": name,
                "state": comp_state,
                "number_of_containers": wanted,
                "containers": [{"state": "READY"}] * ready
                + [{"state": "RUNNING_BUT_UNREADY"}] * (wanted - ready),
            }
            for name, comp_state, wanted, ready in components
        ],
    }


def test_started_with_every_component_stable_is_stable() -> None:
    # The AM left the service STARTED although each component is STABLE (its state
    # is re-read only on a READY count change): the components decide.
    status = _status("STARTED", ("ps", "STABLE", 1, 1), ("standby", "STABLE", 0, 0))
    assert effective_state(status) == "STABLE"
    assert ready_counts(status) == configured_counts(status) == {"ps": 1, "standby": 0}


def test_a_flexing_component_keeps_the_reported_state() -> None:
    status = _status("STARTED", ("ps", "STABLE", 1, 1), ("tensorboard", "FLEXING", 1, 0))
    assert effective_state(status) == "STARTED"
    assert component_states(status) == {"ps": "STABLE", "tensorboard": "FLEXING"}
    assert ready_counts(status) == {"ps": 1, "tensorboard": 0}


def test_other_states_are_reported_as_they_are() -> None:
    assert effective_state(_status("STABLE", ("ps", "STABLE", 1, 1))) == "STABLE"
    assert effective_state(_status("STOPPED", ("ps", "STABLE", 0, 0))) == "STOPPED"
    # No components known yet (ACCEPTED, or not found): never STABLE.
    assert effective_state({"state": "STARTED", "components": []}) == "STARTED"

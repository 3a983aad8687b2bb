#!/usr/bin/python
"""Ansible module: merge properties into a Hadoop ``*-site.xml`` without clobbering it."""

from __future__ import annotations

import os
import tempfile
from xml.dom import minidom

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
---
module: hadoop_properties
short_description: Merge properties into a Hadoop configuration XML file
description:
  - Sets or merges C(<property>) entries of a Hadoop configuration file (yarn-site.xml,
    resource-types.xml, capacity-scheduler.xml, ...) and leaves everything else in the
    file as it was - other properties, comments, processing instructions, layout.
  - A property that is already present with the wanted value is left untouched, so a
    second run reports no change.
  - A property marked C(<final>true</final>) with a different value is never overwritten;
    the module fails and names it, because Hadoop would ignore the new value anyway.
options:
  path:
    description: The configuration file.
    type: path
    required: true
  properties:
    description: Properties to set, name to value. Values are written as strings.
    type: dict
    default: {}
  list_properties:
    description:
      - Comma-separated list properties to merge, name to list of items. Items already
        present are kept in their order; missing items are appended.
    type: dict
    default: {}
  create:
    description: Create the file (an empty configuration) when it does not exist.
    type: bool
    default: true
  mode:
    description: File mode for a created file.
    type: str
    default: "0644"
  backup:
    description: Keep a timestamped copy of the file before changing it.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
"""

EXAMPLES = r"""
- name: Enable the YARN Services API
  hadoop_properties:
    path: /etc/hadoop/conf/yarn-site.xml
    properties:
      yarn.webapp.api-service.enable: "true"
    list_properties:
      yarn.nodemanager.resource-plugins: [yarn.io/gpu]
"""

RETURN = r"""
updated:
  description: Names of the properties that were added or changed.
  type: list
  elements: str
  returned: always
"""

EMPTY_CONFIGURATION = '<?xml version="1.0" encoding="UTF-8"?>\n<configuration>\n</configuration>\n'


def _text(node: minidom.Element | None) -> str:
    """The text content of an element (empty for a missing one)."""
    if node is None:
        return ""
    return "".join(c.data for c in node.childNodes if c.nodeType == c.TEXT_NODE).strip()


def _child(elem: minidom.Element, tag: str) -> minidom.Element | None:
    """The first direct child element named ``tag``."""
    for c in elem.childNodes:
        if c.nodeType == c.ELEMENT_NODE and c.tagName == tag:
            return c
    return None


def _set_text(doc: minidom.Document, elem: minidom.Element, value: str) -> None:
    """Replace the text of ``elem`` by ``value``."""
    for c in list(elem.childNodes):
        elem.removeChild(c)
    elem.appendChild(doc.createTextNode(value))


def _index(root: minidom.Element) -> dict[str, minidom.Element]:
    """Property name -> its <property> element (the last one wins, as in Hadoop)."""
    found: dict[str, minidom.Element] = {}
    for prop in root.getElementsByTagName("property"):
        name = _text(_child(prop, "name"))
        if name:
            found[name] = prop
    return found


def _merge_list(current: str, items: list[str]) -> str:
    """Append the missing ``items`` to the comma-separated ``current`` value."""
    have = [x.strip() for x in current.split(",") if x.strip()]
    return ",".join(have + [i for i in items if i not in have])


def _append_property(doc: minidom.Document, root: minidom.Element, name: str, value: str) -> None:
    """Append a new <property> at the end of <configuration>, indented like Hadoop's files."""
    prop = doc.createElement("property")
    for tag, text in (("name", name), ("value", value)):
        prop.appendChild(doc.createTextNode("\n    "))
        el = doc.createElement(tag)
        el.appendChild(doc.createTextNode(text))
        prop.appendChild(el)
    prop.appendChild(doc.createTextNode("\n  "))
    last = root.lastChild
    # Keep the closing tag on its own line: put the new property before trailing blanks.
    if last is not None and last.nodeType == last.TEXT_NODE and not last.data.strip():
        root.insertBefore(doc.createTextNode("\n  "), last)
        root.insertBefore(prop, last)
    else:
        root.appendChild(doc.createTextNode("\n  "))
        root.appendChild(prop)
        root.appendChild(doc.createTextNode("\n"))


def _serialize(doc: minidom.Document) -> str:
    """The document as text, one top-level node (PI, comment, root) per line."""
    parts = ['<?xml version="1.0" encoding="UTF-8"?>']
    parts.extend(node.toxml() for node in doc.childNodes)
    return "\n".join(parts) + "\n"


def merge(
    original: str, properties: dict[str, str], list_properties: dict[str, list[str]]
) -> tuple[str, list[str], list[str]]:
    """Merge into the XML text ``original``.

    Returns the new text, the updated property names and the names of final properties
    that would have to change (a conflict the caller must report).
    """
    doc = minidom.parseString(original.encode("utf-8"))
    root = doc.documentElement
    if root.tagName != "configuration":
        raise ValueError(f"root element is <{root.tagName}>, expected <configuration>")
    existing = _index(root)
    wanted: dict[str, str] = {}
    for name, value in properties.items():
        wanted[name] = str(value).lower() if isinstance(value, bool) else str(value)
    for name, items in list_properties.items():
        current = _text(_child(existing[name], "value")) if name in existing else ""
        wanted[name] = _merge_list(current, [str(i) for i in items])
    updated: list[str] = []
    conflicts: list[str] = []
    for name, value in wanted.items():
        prop = existing.get(name)
        if prop is None:
            _append_property(doc, root, name, value)
            updated.append(name)
            continue
        value_el = _child(prop, "value")
        if _text(value_el) == value:
            continue
        if _text(_child(prop, "final")).lower() == "true":
            conflicts.append(f"{name} (final, value {_text(value_el)!r}, wanted {value!r})")
            continue
        if value_el is None:
            value_el = doc.createElement("value")
            prop.appendChild(value_el)
        _set_text(doc, value_el, value)
        updated.append(name)
    return _serialize(doc), updated, conflicts


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "properties": {"type": "dict", "default": {}},
            "list_properties": {"type": "dict", "default": {}},
            "create": {"type": "bool", "default": True},
            "mode": {"type": "str", "default": "0644"},
            "backup": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    path = module.params["path"]
    for name, items in module.params["list_properties"].items():
        if not isinstance(items, list):
            module.fail_json(msg=f"list_properties[{name!r}] must be a list, got {items!r}")
    exists = os.path.exists(path)
    if not exists and not module.params["create"]:
        module.fail_json(msg=f"{path} does not exist and create is false")
    if exists:
        with open(path, encoding="utf-8") as fh:
            original = fh.read()
    else:
        original = EMPTY_CONFIGURATION
    try:
        new, updated, conflicts = merge(
            original, module.params["properties"], module.params["list_properties"]
        )
    except Exception as exc:  # expat errors, wrong root: name the file
        module.fail_json(msg=f"cannot merge into {path}: {exc}")
    if conflicts:
        module.fail_json(
            msg=f"{path}: final properties would have to change: {'; '.join(conflicts)}. "
            "Remove <final> there or change the role variables.",
            updated=[],
        )
    changed = bool(updated) or not exists
    result = {"changed": changed, "updated": updated, "path": path}
    if module._diff:
        result["diff"] = {
            "before": original if exists else "",
            "after": new,
            "before_header": path,
            "after_header": path,
        }
    if changed and not module.check_mode:
        if exists and module.params["backup"]:
            result["backup_file"] = module.backup_local(path)
        directory = os.path.dirname(path) or "."
        if not os.path.isdir(directory):
            module.fail_json(msg=f"directory {directory} of {path} does not exist")
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hadoop_properties.")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new)
        if exists:
            # Keep owner, group and mode of the operator's file.
            st = os.stat(path)
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, int(module.params["mode"], 8))
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

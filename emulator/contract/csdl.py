"""Microsoft Graph v1.0's CSDL (azure-specs/graph/v1.0/cleanMetadata.xml): which properties an entity or complex
type has (with its base types), and whether a JSON object fits them."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
NAMESPACE = "microsoft.graph"
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass
class Prop:
    type: str
    nullable: bool


@dataclass
class StructuredType:
    name: str
    base: Optional[str]
    properties: dict[str, Prop]
    navigation: set[str]


class Csdl:
    def __init__(self, path: Path) -> None:
        self.types: dict[str, StructuredType] = {}
        self.enums: set[str] = set()
        root = ET.parse(path).getroot()
        for schema in root.iter(f"{EDM}Schema"):
            if schema.get("Namespace") != NAMESPACE:
                continue
            for element in schema:
                if element.tag == f"{EDM}EnumType":
                    self.enums.add(element.get("Name"))
                if element.tag not in (f"{EDM}EntityType", f"{EDM}ComplexType"):
                    continue
                base = element.get("BaseType")
                self.types[element.get("Name")] = StructuredType(
                    name=element.get("Name"),
                    base=base.split(".")[-1] if base else None,
                    properties={
                        p.get("Name"): Prop(p.get("Type"), p.get("Nullable", "true") != "false")
                        for p in element.findall(f"{EDM}Property")
                    },
                    navigation={p.get("Name") for p in element.findall(f"{EDM}NavigationProperty")},
                )

    def lineage(self, name: str) -> list[StructuredType]:
        out = []
        while name:
            t = self.types[name]
            out.append(t)
            name = t.base
        return out

    def property(self, type_name: str, prop: str) -> Optional[Prop]:
        for t in self.lineage(type_name):
            if prop in t.properties:
                return t.properties[prop]
        return None

    def problems(self, type_name: str, value: Any, path: str = "") -> list[str]:
        """What in `value` does not fit `type_name`: undeclared properties, wrong JSON types, nulls where the
        CSDL says Nullable="false". `@odata.*` and other annotations are ignored; a derived type named by
        `@odata.type` is used instead of `type_name`."""
        if not isinstance(value, dict):
            return [f"{path or '(root)'}: expected an object of {type_name}, got {value!r}"]
        odata_type = value.get("@odata.type")
        if isinstance(odata_type, str) and odata_type.startswith(f"#{NAMESPACE}."):
            derived = odata_type[len(NAMESPACE) + 2 :]
            if derived in self.types and type_name in {t.name for t in self.lineage(derived)}:
                type_name = derived
        out = []
        for key, item in value.items():
            if "@" in key:  # @odata.context, @odata.type, name@odata.type ...
                continue
            prop = self.property(type_name, key)
            where = f"{path}/{key}"
            if prop is None:
                navigable = any(key in t.navigation for t in self.lineage(type_name))
                out.append(f"{where}: {type_name} has no property '{key}'" + (" (it is a navigation property)" if navigable else ""))
                continue
            out.extend(self._check(prop.type, prop.nullable, item, where))
        return out

    def _check(self, edm_type: str, nullable: bool, value: Any, where: str) -> list[str]:
        if value is None:
            return [] if nullable else [f"{where}: null, but the property is Nullable=\"false\""]
        if edm_type.startswith("Collection("):
            inner = edm_type[len("Collection(") : -1]
            if not isinstance(value, list):
                return [f"{where}: expected a collection of {inner}, got {value!r}"]
            out = []
            for i, item in enumerate(value):
                out.extend(self._check(inner, False, item, f"{where}/{i}"))
            return out
        simple = {
            "Edm.String": lambda v: isinstance(v, str),
            "Edm.Boolean": lambda v: isinstance(v, bool),
            "Edm.Int32": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "Edm.Int64": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "Edm.Guid": lambda v: isinstance(v, str) and _is_guid(v),
            "Edm.DateTimeOffset": lambda v: isinstance(v, str) and bool(RFC3339.match(v)),
            "Edm.Binary": lambda v: isinstance(v, str),
            "Edm.Stream": lambda v: True,
        }
        if edm_type in simple:
            return [] if simple[edm_type](value) else [f"{where}: {value!r} is not a valid {edm_type}"]
        name = edm_type.split(".")[-1]
        if name in self.enums:
            return [] if isinstance(value, str) else [f"{where}: {value!r} is not a {edm_type} member name"]
        if name in self.types:
            return self.problems(name, value, where)
        return []  # a type outside this check (other Edm primitives)


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False

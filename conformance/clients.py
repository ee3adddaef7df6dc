"""Drives a running Braid with the PyPI clients `fhirclient` (SMART on FHIR's Python client)
and `fhirpy`, and checks every result against the ids the caller seeded.

Usage: clients.py BASE_URL. Expects the data that tests/api/conformance.rs loads: Patients
c00..c11 with family "Conformance", Observations obs-c01-0..2 about Patient/c01.
Prints one line per check and exits non-zero on the first mismatch.
"""
import sys
import warnings

from fhirclient import client as smart_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient

from check import check, summary

warnings.simplefilter("ignore", DeprecationWarning)

BASE = sys.argv[1]
PATIENTS = sorted(f"c{n:02d}" for n in range(12))
OBSERVATIONS = sorted(f"obs-c01-{n}" for n in range(3))


# fhirclient: search, following `next` links to the last page.
smart = smart_client.FHIRClient(settings={"app_id": "braid-conformance", "api_base": BASE})
found = [p.id for p in Patient.where(struct={"family": "Conformance", "_count": "5"}).perform_resources_iter(smart.server)]
check("fhirclient: search across pages", sorted(found), PATIENTS)
check("fhirclient: no duplicates across pages", len(found), len(PATIENTS))
observations = [o.id for o in Observation.where(struct={"subject": "Patient/c01"}).perform_resources_iter(smart.server)]
check("fhirclient: reference search", sorted(observations), OBSERVATIONS)
patient = Patient.read("c03", smart.server)
check("fhirclient: read", patient.name[0].family, "Conformance")

# fhirpy: fetch_all (follows `next`), count(), _include, a transaction.
fhirpy = SyncFHIRClient(BASE)
patients = fhirpy.resources("Patient").search(family="Conformance").limit(5).fetch_all()
check("fhirpy: fetch_all across pages", sorted(p.id for p in patients), PATIENTS)
check("fhirpy: count()", fhirpy.resources("Patient").search(family="Conformance").count(), 12)
bundle = fhirpy.resources("Observation").search(subject="Patient/c01").include("Observation", "subject").fetch_raw()
ids = sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"])
check("fhirpy: _include", ids, sorted([f"Observation/{o}" for o in OBSERVATIONS] + ["Patient/c01"]))
transaction = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {"fullUrl": "urn:uuid:8f0a7f8e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "name": [{"family": "Fhirpy"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "note"},
                      "subject": {"reference": "urn:uuid:8f0a7f8e-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Observation"}},
    ],
}
response = fhirpy.execute("/", method="post", data=transaction)
check("fhirpy: transaction answered", [e["response"]["status"] for e in response["entry"]], ["201 Created", "201 Created"])
created = fhirpy.resources("Patient").search(family="Fhirpy").fetch_all()
check("fhirpy: transaction created the patient", len(created), 1)
linked = fhirpy.resources("Observation").search(subject=f"Patient/{created[0].id}").fetch_all()
check("fhirpy: urn:uuid reference resolved", len(linked), 1)

summary()

"""SMART Backend Services with the PyPI client fhirclient: the script makes its own ES384 key,
registers itself with the initial access token it is given (RFC 7591), signs a client assertion
(PyJWT), and lets fhirclient find the token endpoint in the CapabilityStatement's oauth-uris,
get a client_credentials token and read a Patient.

Usage: python backend.py BASE_URL INITIAL_ACCESS_TOKEN
"""

import json
import sys
import time
import urllib.request
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from fhirclient import client
from fhirclient.models.patient import Patient

from check import check, summary

base, initial_token = sys.argv[1], sys.argv[2]
origin = base.removesuffix("/fhir")


key = ec.generate_private_key(ec.SECP384R1())
public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
public.update({"kid": "fhirclient-1", "alg": "ES384", "use": "sig"})
request = urllib.request.Request(
    f"{origin}/auth/register",
    data=json.dumps({
        "client_name": "fhirclient backend",
        "grant_types": ["client_credentials"],
        "token_endpoint_auth_method": "private_key_jwt",
        "jwks": {"keys": [public]},
        "scope": "system/Patient.rs",
    }).encode(),
    headers={"content-type": "application/json", "authorization": f"Bearer {initial_token}"},
    method="POST",
)
with urllib.request.urlopen(request) as response:
    check("registration status", response.status, 201)
    client_id = json.load(response)["client_id"]

now = int(time.time())
assertion = jwt.encode(
    {"iss": client_id, "sub": client_id, "aud": f"{origin}/auth/token", "exp": now + 240, "jti": str(uuid.uuid4())},
    key,
    algorithm="ES384",
    headers={"kid": "fhirclient-1"},
)
smart = client.FHIRClient(settings={"app_id": client_id, "api_base": base, "jwt_token": assertion})
smart.scope = "system/Patient.rs"
smart.prepare()
smart.authorize()
check("authorized", smart.ready, True)
patient = Patient.read("c01", smart.server)
check("read id", patient.id, "c01")
summary()

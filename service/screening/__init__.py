"""Population screening: which patients could be candidates, and what is missing for each.

Sources (a folder of Bulk NDJSON, a FHIR server searched by the protocol's own codes, a Bulk
``$export``) all end in the same per-patient evaluation as ``$eligibility``: nothing here
re-implements fetching or the clinical rules, it only feeds them and writes the worklist.
"""

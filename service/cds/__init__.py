"""CDS Hooks 2.0 (patient-view): client authentication, request/feedback models and cards.

The router that ties these to the evaluation engine lives with the HTTP API.
"""

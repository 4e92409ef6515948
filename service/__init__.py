"""FHIR R4 eligibility service for the donor-derived CD19 CAR-T trial in R/R B-ALL."""

__version__ = "0.1.0"

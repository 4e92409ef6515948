"""Site terminology: a site's own codes and unit strings mapped to the protocol's vocabulary.

Kept apart from the trial protocol (fhir_mappings/<trial>/): the protocol says which LOINC /
SNOMED CT codes a criterion reads; a site's ConceptMaps say which of its local codes mean
exactly those. Only ``equivalent`` / ``equal`` mappings may feed a criterion; any other
mapping is evidence that keeps the criterion undetermined.

Layers: ``conceptmaps`` (load and validate a folder, start-up), ``translate`` (optional
``ConceptMap/$translate`` client, before evaluation), ``table`` (the per-evaluation mapping
table the record builder reads: a dict lookup per unknown code), ``report`` and ``usagi``
(tools for the terminology team).
"""

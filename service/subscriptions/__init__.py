"""Continuous screening: the FHIR server tells us when a patient's data changes (issue 22).

* ``criteria``: which changes matter, derived from every loaded protocol's ``Relevance``;
* ``subscribe``: create / check / remove our R4 rest-hook Subscriptions on the server;
* ``receiver``: the HTTP endpoint the server notifies (shared secret, answers at once);
* ``worker``: debounce per patient, evaluate every study, store, act on a status change;
* ``catchup``: the persisted watermark and the ``_lastUpdated`` search that misses nothing.
"""

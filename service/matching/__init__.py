"""``POST /getClinicalTrial``: the trial-matching wire format matching apps already speak
(CodeX / mCODE ``clinical-trial-matching-service``), answered from every loaded protocol with
a score *and* each criterion's result (manual: integrators/get-clinical-trial.md)."""

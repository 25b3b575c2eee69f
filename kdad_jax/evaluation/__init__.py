"""Maps → numbers: ``metrics`` (AUROC, F1-max, AU-PRO, AU-sPRO, exact curves) and ``evaluate``
(a category's maps, metrics with the reason when one is undefined, decision thresholds)."""

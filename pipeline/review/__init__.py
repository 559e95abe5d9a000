"""Review of flagged samples: panels, the flagged-samples table, verdicts and their feedback."""

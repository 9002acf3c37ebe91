"""Jobs: the lease protocol, submission, per-forget-set results and guardrails, campaigns, plots."""

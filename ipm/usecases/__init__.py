"""Use-cases: one module per capability, typed verbs over a unit of work."""

"""Classification, rules, escalation, the routing service and the department consumer SDK."""

"""secure_audit: audit-log verification and deployment compliance checks (a leaf: nothing imports it)."""

"""5. CACHE: RFC 9111 policy, keys, lookup and the storage tiers."""

"""Operations: tenants and API keys, quotas, the Prometheus exposition, the service's processes."""

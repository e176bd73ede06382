"""HTTP fetching: proxy groups, host failover, retries and a host-vs-proxy failure taxonomy."""

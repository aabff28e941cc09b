"""What operators see and drive: HTTP endpoints, Prometheus metrics, the published state,
`failover status`, and systemd's notify protocol."""

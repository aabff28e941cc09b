"""`failover demo`: three local candidates and a harmless stand-in child, no servers needed."""

"""Live updates: PostgreSQL announces changes (NOTIFY), each process listens once and fans
them out to its subscribers, coalesced."""

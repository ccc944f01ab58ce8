"""Ticketing: a GraphQL API for browsing events and reserving tickets without overselling."""
